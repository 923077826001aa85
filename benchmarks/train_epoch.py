"""AnomalyCLIP training epoch time with the frozen-feature cache vs without (tiny backbone, CPU).

    python benchmarks/train_epoch.py --threads 1         # 64 images of 384 px, model input 336, 3 epochs each
    python benchmarks/train_epoch.py --threads 1 --image-size 224 --file-size 256

Both runs train the same module from the same seed in one process, with the real AnomalyDataModule
(PNG decoding, bicubic resize to the model input) and Lightning's Trainer. Printed: the mean epoch time
without cache, the one-off cache build (one encoder pass over the split, in on_fit_start), the mean epoch
time with cache, their ratio, and the largest difference of the learned prompts between the two runs.
The text encoder still runs once per step in both (2 prompts), so the ratio grows with the image size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from perf_support import machine, synthetic_source, tiny_anomalyclip

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from lightning_modules.anomalyclip import AnomalyCLIPModule


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.setup_s = 0.0

    def on_fit_start(self, trainer, module) -> None:  # runs before the module's on_fit_start (cache build)
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer, module) -> None:
        self.setup_s = time.perf_counter() - self._fit_start

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs.append(time.perf_counter() - self._start)


def train(root: Path, args: argparse.Namespace, cache: bool) -> tuple[EpochTimer, AnomalyCLIPModule]:
    L.seed_everything(args.seed, verbose=False)
    module = AnomalyCLIPModule(tiny_anomalyclip(args.image_size, cache_features=cache))
    data = DataConfig(
        name="synthetic", root=str(root), batch_size=args.batch_size, eval_batch_size=args.batch_size,
        num_workers=args.workers, eval_size=args.eval_size,
    )
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=[timer], default_root_dir=args.tmp,
    )
    trainer.fit(module, datamodule=AnomalyDataModule(data, image_size=args.image_size))
    return timer, module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", type=int, default=2)
    parser.add_argument("--images-per-category", type=int, default=32)
    parser.add_argument("--file-size", type=int, default=384, help="size of the generated PNG files")
    parser.add_argument("--image-size", type=int, default=336, help="model input size (multiple of 8)")
    parser.add_argument("--eval-size", type=int, default=None, help="mask / loss size (default: image size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0, as the authors' timing)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=111)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        root, n = synthetic_source(Path(tmp) / "data", args.categories, args.images_per_category, args.file_size)
        print(f"machine: {machine()}")
        print(
            f"setup: tiny AnomalyCLIP (zsad-tiny-vit, DPAM 2..6), {n} training images ({args.file_size} px PNG) -> "
            f"{args.image_size} px input, batch {args.batch_size}, {args.epochs} epochs, {args.workers} workers"
        )
        uncached, a = train(root, args, cache=False)
        cached, b = train(root, args, cache=True)
    assert b.feature_cache_status == "cached (built)", b.feature_cache_status
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.model.prompts.parameters(), b.model.prompts.parameters(), strict=True))
    t_uncached = statistics.mean(uncached.epochs)
    t_cached = statistics.mean(cached.epochs)
    build = cached.setup_s - uncached.setup_s
    print(f"epoch without cache:      {t_uncached:8.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in uncached.epochs)})")
    print(f"cache build (once):       {build:8.3f} s  (one encoder pass over the split, batch {args.batch_size})")
    print(f"epoch with cache:         {t_cached:8.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in cached.epochs)})")
    print(f"ratio per epoch:          {t_uncached / t_cached:8.1f} x  faster with cache (target >= 10x)")
    total_u, total_c = sum(uncached.epochs), sum(cached.epochs) + build
    print(f"ratio over {args.epochs} epochs:      {total_u / total_c:8.1f} x  (cache build included)")
    print(f"learned prompts, max |cached - uncached|: {diff:.2e}")


if __name__ == "__main__":
    main()
