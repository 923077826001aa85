"""One AnomalyCLIP evaluation on a synthetic dataset, split into data / encoder / maps / metrics time.

    python benchmarks/end_to_end.py                       # 64 images of 256 px -> 224 px input, CPU
    python benchmarks/end_to_end.py --workers 2 --batch-size 16
    python benchmarks/end_to_end.py --backbone ViT-L-14-336-quickgelu --image-size 518 --dpam-start 6 \
        --map-layers 24 --device cuda --precision bf16-mixed --workers 8   # on a GPU
    (benchmarks/gpu_suite.sh runs the GPU line on 512 images of 1,024 px, batch 32)

The loop is what ``ZeroShotModule.test_step`` does, with a timer around each part:

- data: waiting for the next batch from the AnomalyDataModule's test loader (PNG decoding, resize,
  normalisation, collation; with workers, only the time the main process waits) and the copy to the device;
- encoder: ``AnomalyCLIP.encode_images`` (image encoder with the V-V path, projections);
- maps: text embeddings (once per evaluation), logits, upsampled maps and the Gaussian blur;
- metrics: ``AnomalyEvaluator.update`` for every batch plus the final ``compute`` (AUROC/AP/AUPRO).

Afterwards the same evaluation runs through Lightning's ``Trainer.test`` (what ``zsad test`` does) for its
total time, and the per-category image AUROC of both is compared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from inference import PRECISIONS, autocast, sync
from perf_support import add_model_arguments, machine, model_from_arguments, synthetic_source

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from lightning_modules.anomalyclip import AnomalyCLIPModule
from lightning_modules.metrics import AnomalyEvaluator
from lightning_modules.ops import gaussian_blur


def timed_evaluation(
    module: AnomalyCLIPModule, datamodule: AnomalyDataModule, device: torch.device, precision: str
):
    model = module.model
    evaluator = AnomalyEvaluator(
        categories=datamodule.categories, pixel_metrics=datamodule.full_index.has_masks
    ).to(device)
    times = dict.fromkeys(("data", "encoder", "maps", "metrics"), 0.0)
    n = 0
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        batches = iter(datamodule.test_dataloader())
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                times["data"] += time.perf_counter() - t0
                break
            batch = {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            sync(device)
            t1 = time.perf_counter()
            features = model.encode_images(batch["image"])
            sync(device)
            t2 = time.perf_counter()
            size = tuple(batch["mask"].shape[-2:])
            output = model.scores(features, size, text=model.inference_text_embeddings())
            maps = gaussian_blur(output.anomaly_map(), model.cfg.gaussian_sigma)
            sync(device)
            t3 = time.perf_counter()
            evaluator.update(
                category_ids=batch["category_id"],
                sample_ids=batch["sample_id"],
                image_scores=output.image_scores.float(),
                labels=batch["label"],
                anomaly_maps=maps,
                masks=batch["mask"],
                has_mask=batch["has_mask"],
            )
            sync(device)
            t4 = time.perf_counter()
            times["data"] += t1 - t0
            times["encoder"] += t2 - t1
            times["maps"] += t3 - t2
            times["metrics"] += t4 - t3
            n += len(batch["label"])
        t5 = time.perf_counter()
        result = evaluator.compute()
        times["metrics"] += time.perf_counter() - t5
    return times, time.perf_counter() - start, n, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--categories", type=int, default=2)
    parser.add_argument("--images-per-category", type=int, default=32)
    parser.add_argument("--file-size", type=int, default=256)
    parser.add_argument(
        "--copies", type=int, default=1, help="copies of each generated test image (see perf_support)"
    )
    add_model_arguments(parser, sorted(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    cfg, device = model_from_arguments(args)
    with tempfile.TemporaryDirectory() as tmp:
        root, n_images = synthetic_source(
            Path(tmp) / "data", args.categories, args.images_per_category, args.file_size, copies=args.copies
        )
        data = DataConfig(
            name="synthetic",
            root=str(root),
            batch_size=args.batch_size,
            eval_batch_size=args.batch_size,
            num_workers=args.workers,
        )
        torch.manual_seed(0)
        module = AnomalyCLIPModule(cfg).to(device).eval()
        datamodule = AnomalyDataModule(data, image_size=args.image_size)
        print(f"machine: {machine()}; device {device}")
        print(
            f"setup: AnomalyCLIP on {args.backbone} (random weights), {n_images} test images ({args.file_size} px PNG) -> "
            f"{args.image_size} px, batch {args.batch_size}, {args.workers} workers, precision {args.precision}"
        )
        times, total, n, result = timed_evaluation(module, datamodule, device, args.precision)

        accelerator = "gpu" if device.type == "cuda" else "cpu"
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            precision=args.precision,
            default_root_dir=tmp,
        )
        start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        lightning_total = time.perf_counter() - start

    print(f"{'part':>8} {'seconds':>9} {'share':>7}")
    for part, seconds in times.items():
        print(f"{part:>8} {seconds:>9.3f} {seconds / total:>6.1%}")
    print(
        f"{'total':>8} {total:>9.3f}  ({n / total:.2f} images/s; parts sum to {sum(times.values()) / total:.1%})"
    )
    print(
        f"Trainer.test of the same evaluation: {lightning_total:.3f} s ({n / lightning_total:.2f} images/s)"
    )
    ours, theirs = result.per_category, module.test_results.per_category
    diffs = [
        abs(ours[c][k] - theirs[c][k])
        for c in ours
        for k in ours[c]
        if ours[c][k] is not None and theirs[c][k] is not None
    ]
    print(f"metrics of the timed loop vs Trainer.test: max |diff| {max(diffs):.2e} over {len(diffs)} values")


if __name__ == "__main__":
    main()
