"""What a DDP evaluation holds: categories finished one by one (each process knows its samples) against the
end-of-epoch gather (``AnomalyEvaluator`` without ``expected_samples``), on W CPU processes (gloo).

    python benchmarks/ddp_eval_memory.py                   # 2 processes, 5 categories of 40 maps of 256 x 256
    python benchmarks/ddp_eval_memory.py --world 4 --size 518 --per-category 60

Each process reads its share of the samples in the order Lightning's unshuffled ``DistributedSampler``
gives (the last round padded with the first samples), in batches, updates one evaluator and at the end computes the metrics and curves; maps are
``benchmarks/metrics.py``'s CLIP-like synthetic maps, one generator per sample. Printed per mode and process:
the most pixel samples stored at once, their bytes (float32 scores + uint8 masks), the peak RSS growth
over the run, the wall time and the bytes of the curves (every distinct score a threshold: kept for every
category in both modes); then whether both modes gave identical results on every process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics import synthetic_batch  # noqa: E402  (benchmarks/metrics.py)

from lightning_modules.metrics import AnomalyEvaluator  # noqa: E402
from lightning_modules.metrics.distributed import expected_samples  # noqa: E402


def sample(i: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    maps, masks, labels = synthetic_batch(1, size, torch.Generator().manual_seed(1000 + i))
    return maps[0], masks[0], labels[0]


MODES = ("end-of-epoch gather", "category by category")


def curve_bytes(value: object) -> int:
    """Bytes of the arrays in a CurveSet (what the evaluator keeps of a finished category)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if dataclasses.is_dataclass(value):
        return sum(curve_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


def run_rank(rank: int, args: argparse.Namespace, mode: str, port: int, out_dir: str) -> None:
    """One process of one mode (a fresh process per mode: peak RSS is per process)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.set_num_threads(1)
    try:
        categories = [f"c{c}" for c in range(args.categories)]
        sizes = [args.per_category + (c % 3) * args.per_category // 4 for c in range(args.categories)]
        sample_category = [c for c, n in enumerate(sizes) for _ in range(n)]
        indices = list(range(len(sample_category)))
        sampler = DistributedSampler(indices, num_replicas=args.world, rank=rank, shuffle=False)
        loader = DataLoader(indices, sampler=sampler, batch_size=args.batch)
        own = expected_samples(loader, sample_category, len(categories))
        ev = AnomalyEvaluator(
            categories,
            samples_per_category=sizes,
            expected_samples=own if mode == "category by category" else None,
        )
        dist.barrier()
        rss0, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
        for batch in loader:
            samples = [sample(i, args.size) for i in batch.tolist()]
            maps, masks, labels = (torch.stack(t) for t in zip(*samples, strict=True))
            cats = torch.tensor([sample_category[i] for i in batch.tolist()])
            ev.update(cats, batch, maps.amax((1, 2)), labels, maps, masks)
        result = ev.compute()
        curves = ev.curves()  # as zsad's test loop does (pictures, F1 thresholds)
        took = time.perf_counter() - start
        peak = ev.peak_stored_pixel_samples
        record = {
            "peak_samples": peak,
            "peak_mib": peak * args.size**2 * 5 / 2**20,
            "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**10,
            "seconds": took,
            "curves_mib": sum(curve_bytes(c) for c in curves.values()) / 2**20,
            "share": len(list(sampler)),
            "per_category": result.per_category,
        }
        Path(out_dir, f"{mode}-{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--categories", type=int, default=5)
    parser.add_argument("--per-category", type=int, default=40, help="sizes vary: n, 1.25 n, 1.5 n, n, ...")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        for mode in MODES:
            mp.spawn(run_rank, args=(args, mode, free_port(), out_dir), nprocs=args.world, join=True)
        runs = {
            mode: [json.loads(Path(out_dir, f"{mode}-{r}.json").read_text()) for r in range(args.world)]
            for mode in MODES
        }
    print(
        f"{args.world} processes, {args.categories} categories, maps of {args.size} x {args.size}, batches of {args.batch}"
    )
    for mode, ranks in runs.items():
        for r, rec in enumerate(ranks):
            print(
                f"  {mode:>20} rank {r}: {rec['share']} samples received, at most {rec['peak_samples']} stored "
                f"({rec['peak_mib']:.0f} MiB of pixel states), peak RSS +{rec['rss_growth_mib']:.0f} MiB, "
                f"{rec['seconds']:.1f} s; curves {rec['curves_mib']:.0f} MiB"
            )
    results = [rec["per_category"] for ranks in runs.values() for rec in ranks]
    print(f"  identical results in both modes on every process: {all(r == results[0] for r in results)}")


if __name__ == "__main__":
    main()
