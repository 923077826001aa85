"""AnomalyCLIP training epoch time with the frozen-feature cache vs without (tiny backbone, CPU by default).

    python benchmarks/train_epoch.py --threads 1         # 64 images of 384 px, model input 336, 3 epochs each
    python benchmarks/train_epoch.py --threads 1 --image-size 224 --file-size 256
    # issue 9's GPU run: 15 epochs on 1,725 images (3 x 23 x 25 copies), ViT-L-14-336, random weights, 518 px
    python benchmarks/train_epoch.py --backbone ViT-L-14-336-quickgelu --image-size 518 --dpam-start 6 \
        --map-layers 24 --device cuda --precision bf16-mixed --categories 3 --images-per-category 23 \
        --copies 25 --file-size 518 --epochs 15 --uncached-epochs 1 --workers 8

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
from inference import PRECISIONS
from lightning.pytorch.callbacks import Callback
from perf_support import add_model_arguments, machine, model_from_arguments, synthetic_source

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from lightning_modules.anomalyclip import AnomalyCLIPModule
from lightning_modules.feature_cache import CachedTraining
from lightning_modules.method_spec import cache_settings


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.setup_s = 0.0
        self.fit_s = 0.0

    def on_fit_start(self, trainer, module) -> None:  # runs before CachedTraining's (cache build)
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer, module) -> None:
        self.setup_s = time.perf_counter() - self._fit_start

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs.append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer, module) -> None:
        self.fit_s = time.perf_counter() - self._fit_start


def train(
    root: Path, args: argparse.Namespace, cache: bool, epochs: int
) -> tuple[EpochTimer, AnomalyCLIPModule, str]:
    """The epoch timings, the trained module and the feature cache's status of a fit as the runner does it."""
    L.seed_everything(args.seed, verbose=False)
    cfg, device = model_from_arguments(args)
    cfg.cache_features = cache
    module = AnomalyCLIPModule(cfg)
    data = DataConfig(
        name="synthetic",
        root=str(root),
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=args.workers,
        eval_size=args.eval_size,
    )
    datamodule = AnomalyDataModule(data, image_size=args.image_size)
    timer = EpochTimer()
    cached_training = CachedTraining(datamodule, cache_settings(cfg))  # what the runner adds
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[timer, cached_training],  # the timer's setup includes the cache build
        default_root_dir=args.tmp,
    )
    trainer.fit(module, datamodule=datamodule)
    return timer, module, cached_training.status


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--categories", type=int, default=2)
    parser.add_argument("--images-per-category", type=int, default=32)
    parser.add_argument("--file-size", type=int, default=384, help="size of the generated PNG files")
    parser.add_argument(
        "--copies", type=int, default=1, help="copies of each generated test image (see perf_support)"
    )
    parser.add_argument("--eval-size", type=int, default=None, help="mask / loss size (default: image size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--uncached-epochs", type=int, default=None, help="epochs of the uncached run (default: --epochs)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (0, as the authors' timing)"
    )
    parser.add_argument("--seed", type=int, default=111)
    add_model_arguments(parser, sorted(PRECISIONS))
    parser.set_defaults(image_size=336)
    args = parser.parse_args()
    uncached_epochs = args.epochs if args.uncached_epochs is None else args.uncached_epochs
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        root, n = synthetic_source(
            Path(tmp) / "data", args.categories, args.images_per_category, args.file_size, copies=args.copies
        )
        print(f"machine: {machine()}")
        print(
            f"setup: AnomalyCLIP on {args.backbone} (random weights; DPAM from block {args.dpam_start}, maps from "
            f"{args.map_layers}), {n} training images ({args.file_size} px PNG) -> {args.image_size} px input, "
            f"batch {args.batch_size}, {args.workers} workers, precision {args.precision}, device {args.device}"
        )
        uncached = train(root, args, cache=False, epochs=uncached_epochs) if uncached_epochs else None
        cached, b, status = train(root, args, cache=True, epochs=args.epochs)
    assert status == "cached (built)", status
    t_cached = statistics.mean(cached.epochs)
    build = cached.setup_s - (uncached[0].setup_s if uncached else 0.0)
    print(
        f"cache build (once):       {build:8.3f} s  (one encoder pass over the split, batch {args.batch_size})"
    )
    print(
        f"epoch with cache:         {t_cached:8.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in cached.epochs)})"
    )
    print(
        f"whole cached training:    {cached.fit_s:8.3f} s  ({args.epochs} epochs, set-up and cache build included)"
    )
    if uncached is None:
        return
    timer, a, _ = uncached
    t_uncached = statistics.mean(timer.epochs)
    print(
        f"epoch without cache:      {t_uncached:8.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in timer.epochs)})"
    )
    print(f"ratio per epoch:          {t_uncached / t_cached:8.1f} x  faster with cache (target >= 10x)")
    if uncached_epochs == args.epochs:
        total_u, total_c = sum(timer.epochs), sum(cached.epochs) + build
        print(f"ratio over {args.epochs} epochs:      {total_u / total_c:8.1f} x  (cache build included)")
        pairs = zip(a.model.prompts.parameters(), b.model.prompts.parameters(), strict=True)
        print(
            f"learned prompts, max |cached - uncached|: {max((x - y).abs().max().item() for x, y in pairs):.2e}"
        )


if __name__ == "__main__":
    main()
