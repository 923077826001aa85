"""Time ``zsad report --bootstrap``'s resampled metrics of one MVTec-sized category against one evaluation.

    python benchmarks/bootstrap.py                       # 100 images of 256 x 256, 1000 resamples
    python benchmarks/bootstrap.py --num-images 60 --size 518 --resamples 200

The category imitates CLIP patch maps (benchmarks/metrics.py's ``synthetic_batch``: ~70% anomalous images,
float32 maps, image score = the map's maximum). Timed in one process on the same inputs:

- one evaluation: every metric of the category as the evaluator computes it (image AUROC/AP/F1-max, pixel
  AUROC/AP/AUPR, exact AUPRO, cflow AUPRO; ``pixel_metrics`` and the image functions), best of 3;
- the bootstrap: preparing the category (each image's split, once) and the eight metrics of ``--resamples``
  stratified resamples (``ResampledCategory``);
- direct recomputation: every metric of a few resamples recomputed from their image lists (an image drawn
  twice appears twice), the cost per resample the bootstrap replaces; the same resamples' values are
  compared with the bootstrap's (max difference printed).

Matrix products use numpy's BLAS with its default threads (``OPENBLAS_NUM_THREADS`` sets them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics import synthetic_batch  # noqa: E402

from lightning_modules.metrics import (  # noqa: E402
    binary_auroc,
    binary_average_precision,
    f1_max,
    pixel_metrics,
)
from lightning_modules.metrics.bootstrap import ResampledCategory, stratified_weights  # noqa: E402


def evaluate(scores: np.ndarray, labels: np.ndarray, maps: list, masks: list) -> dict[str, float | None]:
    values, _ = pixel_metrics(maps, masks)
    values["image_auroc"] = binary_auroc(scores, labels)
    values["image_ap"] = binary_average_precision(scores, labels)
    values["image_f1_max"] = f1_max(scores, labels)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="map side in pixels")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument(
        "--direct", type=int, default=5, help="resamples recomputed directly (timed, compared)"
    )
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    maps_t, masks_t, labels_t = synthetic_batch(args.num_images, args.size, generator)
    maps, masks = list(maps_t.numpy()), list(masks_t.numpy())
    labels = labels_t.numpy()
    scores = maps_t.flatten(1).max(dim=1).values.double().numpy()
    anomalous = masks_t.float().mean().item()
    print(
        f"category: {args.num_images} images ({int(labels.sum())} anomalous) of {args.size} x {args.size}, "
        f"float32 maps, {100 * anomalous:.1f}% anomalous pixels; numpy threads: "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, torch {torch.get_num_threads()}"
    )

    one = []
    for _ in range(3):
        start = time.perf_counter()
        evaluate(scores, labels, maps, masks)
        one.append(time.perf_counter() - start)
    t_one = min(one)

    weights = stratified_weights(labels, args.resamples, np.random.default_rng(0))
    start = time.perf_counter()
    category = ResampledCategory(scores, labels, maps, masks)
    t_prepare = time.perf_counter() - start
    start = time.perf_counter()
    resampled = category.metrics(weights)
    t_resamples = time.perf_counter() - start

    start = time.perf_counter()
    worst = 0.0
    for b in range(args.direct):
        drawn = np.repeat(np.arange(args.num_images), weights[b])
        direct = evaluate(scores[drawn], labels[drawn], [maps[i] for i in drawn], [masks[i] for i in drawn])
        worst = max(worst, max(abs(resampled[m][b] - v) for m, v in direct.items() if v is not None))
    t_direct = (time.perf_counter() - start) / args.direct

    total = t_prepare + t_resamples
    print(f"one evaluation (every metric):        {t_one:8.3f} s")
    print(f"bootstrap: prepare the category once  {t_prepare:8.3f} s")
    print(
        f"bootstrap: {args.resamples} resamples, every metric {t_resamples:8.3f} s  ({1000 * t_resamples / args.resamples:.1f} ms per resample)"
    )
    print(f"bootstrap in all:                     {total:8.3f} s  = {total / t_one:.1f} evaluations")
    print(
        f"direct recomputation:                 {t_direct:8.3f} s per resample -> {args.resamples} resamples "
        f"~{t_direct * args.resamples:.0f} s ({t_direct * args.resamples / total:.0f}x the bootstrap)"
    )
    print(f"bootstrap vs direct on {args.direct} resamples: max |difference| = {worst:.2e}")


if __name__ == "__main__":
    main()
