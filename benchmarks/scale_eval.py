"""Evaluation at Real-IAD scale: memory, metric time per image and 1 vs 2 processes (issue 27).

    python benchmarks/scale_eval.py                      # 30 categories x 5 views, 40-60 samples each: 7,500 maps of 518 px
    python benchmarks/scale_eval.py --samples 80         # 15,000 maps
    python benchmarks/scale_eval.py --samples 2 --size 64 --categories 4   # a quick check (the test's run)

Streams a Real-IAD-shaped test set through ``AnomalyEvaluator`` as zsad's test loop does (``update`` per
batch with ``samples_per_category`` and, under DDP, each process's ``expected_samples``; then ``compute``
and ``curves``): ``--categories`` categories of 5-view samples (``--views``), category c with
``samples x (1, 1.25, 1.5)[c % 3]`` samples, each view one map of ``--size`` px with its mask, in dataset
order (category, sample, view). The maps are ``benchmarks/metrics.py``'s CLIP-like synthetic maps: a pool
of ``--pool`` of them, generated once, map i being pool[i % pool] plus a per-map offset, so that scores
are distinct across maps as real ones are (generating 10^4 maps of 518 px would take longer than scoring
them).

Three runs, each in fresh processes (peak RSS is per process): the whole set in one process, the whole set
in ``--world`` processes (gloo, Lightning's unshuffled ``DistributedSampler`` order; ``--world 1``: none),
and the largest category alone in one process (the memory reference). Printed: per process the maps
received, the metric time per image (every ``update``, which scores a category when its last sample
arrives, plus ``compute`` and ``curves``), wall and CPU (all the process's threads; on a shared machine the
CPU time is what the work costs), the most maps' pixels held at once against the largest category, the
peak RSS growth; the peak RSS of the whole set against the largest category alone; whether 1 and
``--world`` processes give identical results; and the tiny random-weight AnomalyCLIP's time per image on
the same device and threads (maps upsampled to ``--size``), the metrics' share of it, and what the metric
rate means for a GPU evaluation at ``--gpu-rate`` images/s. ``--device cuda`` keeps the states on the GPU,
as zsad's test loop does on a GPU (``benchmarks/gpu_suite.sh``, step ``scale_eval_cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_eval_memory import curve_bytes, free_port
from metrics import synthetic_batch
from perf_support import machine, tiny_anomalyclip
from torch.utils.data import DataLoader, DistributedSampler

from lightning_modules.anomalyclip.model import AnomalyCLIP
from lightning_modules.metrics import AnomalyEvaluator
from lightning_modules.metrics.distributed import expected_samples

MIB = 2**20
GOLDEN = 0.6180339887498949


def category_sizes(args: argparse.Namespace) -> list[int]:
    """Maps per category: 5-view samples times views, the samples varying as (1, 1.25, 1.5) x --samples."""
    return [(args.samples + (c % 3) * args.samples // 4) * args.views for c in range(args.categories)]


def map_pool(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps, masks, labels) of --pool synthetic CLIP-like maps; the same in every process."""
    return synthetic_batch(args.pool, args.size, torch.Generator().manual_seed(args.seed))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


class Clock:
    """Wall and CPU seconds (this process, all its threads) spent inside ``with clock:`` blocks; on a shared
    machine the CPU seconds say what the work costs, the wall seconds what it took there."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.wall, self.cpu = device, 0.0, 0.0

    def __enter__(self) -> None:
        self._sync()
        self._start = (time.perf_counter(), time.process_time())

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def model_seconds_per_image(args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of the tiny random-weight AnomalyCLIP's ``predict`` per image (batches of
    --batch, maps at --size)."""
    torch.manual_seed(0)
    model = AnomalyCLIP(tiny_anomalyclip(args.model_size)).to(device).eval()
    images = torch.randn(
        args.batch, 3, args.model_size, args.model_size, generator=torch.Generator().manual_seed(1)
    )
    images = images.to(device)
    clock = Clock(device)
    with torch.inference_mode():
        model.predict(images, (args.size, args.size))  # warm-up
        with clock:
            for _ in range(args.model_batches):
                model.predict(images, (args.size, args.size))
    n = args.model_batches * args.batch
    return clock.wall / n, clock.cpu / n


def run_rank(rank: int, args: argparse.Namespace, run: dict, port: int, out_dir: str) -> None:
    """One process of one run: its share of the maps through one evaluator; a JSON record per process."""
    world = run["world"]
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        sizes, first = category_sizes(args), 0  # first: the dataset index of this run's first map
        if run["only"] is not None:
            sizes, first = [sizes[run["only"]]], sum(sizes[: run["only"]])
        sample_category = [c for c, n in enumerate(sizes) for _ in range(n)]
        indices = list(range(len(sample_category)))
        sampler = (
            DistributedSampler(indices, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        )
        loader = DataLoader(indices, sampler=sampler, batch_size=args.batch)
        ev = AnomalyEvaluator(
            [f"c{c}" for c in range(len(sizes))],
            samples_per_category=sizes,
            expected_samples=expected_samples(loader, sample_category, len(sizes)) if world > 1 else None,
        ).to(device)
        pool_maps, pool_masks, pool_labels = map_pool(args)
        rss0 = rss_mib()
        if world > 1:
            dist.barrier()
        clock, received = Clock(device), 0
        for batch in loader:
            ids = batch.tolist()
            at = [(first + i) % args.pool for i in ids]
            offsets = torch.tensor([0.25 * (((first + i) * GOLDEN) % 1.0) for i in ids]).view(-1, 1, 1)
            maps = (pool_maps[at] + offsets).to(device)
            masks, labels = pool_masks[at].to(device), pool_labels[at]
            cats = torch.tensor([sample_category[i] for i in ids])
            scores = maps.amax((1, 2))
            with clock:
                ev.update(cats, batch, scores, labels, maps, masks)
            received += len(ids)
        with clock:
            result = ev.compute()
            curves = ev.curves()  # as zsad's test loop does (pictures, F1 thresholds)
        record = {
            "received": received,
            "metric_seconds": clock.wall,
            "metric_cpu_seconds": clock.cpu,
            "peak_held": ev.peak_stored_pixel_samples,
            "scored": ev.scored_here,
            "largest_share": max(len(s) for s in expected_samples(loader, sample_category, len(sizes))),
            "rss_growth_mib": rss_mib() - rss0,
            "device_peak_mib": torch.cuda.max_memory_allocated() / MIB if device.type == "cuda" else None,
            "curves_mib": sum(curve_bytes(c) for c in curves.values()) / MIB,
            "per_category": result.per_category,
        }
        if run["model"] and rank == 0:
            record["model_seconds"] = model_seconds_per_image(args, device)
        Path(out_dir, f"{run['name']}-{rank}.json").write_text(json.dumps(record))
    finally:
        if world > 1:
            dist.destroy_process_group()


def launch(args: argparse.Namespace, run: dict, out_dir: str) -> list[dict]:
    mp.spawn(run_rank, args=(args, run, free_port(), out_dir), nprocs=run["world"], join=True)
    return [json.loads(Path(out_dir, f"{run['name']}-{r}.json").read_text()) for r in range(run["world"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=30)
    parser.add_argument("--views", type=int, default=5, help="maps per sample (Real-IAD: 5 camera views)")
    parser.add_argument(
        "--samples", type=int, default=40, help="samples of the smallest categories (others 1.25x, 1.5x)"
    )
    parser.add_argument("--size", type=int, default=518, help="map size (px)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pool", type=int, default=32, help="distinct synthetic maps generated")
    parser.add_argument("--world", type=int, default=2, help="processes of the DDP run (gloo; 1: no DDP run)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (metric sorts use them)"
    )
    parser.add_argument(
        "--device", default="cpu", help="where the evaluator's states live (cuda: as a GPU test loop)"
    )
    parser.add_argument("--model-size", type=int, default=224, help="tiny model input size (px)")
    parser.add_argument("--model-batches", type=int, default=3)
    parser.add_argument(
        "--gpu-rate", type=float, default=300.0, help="a GPU's model speed to compare with (images/s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = category_sizes(args)
    largest = max(range(len(sizes)), key=sizes.__getitem__)
    runs = [
        {"name": "one process", "world": 1, "only": None, "model": True},
        {"name": f"{args.world} processes", "world": args.world, "only": None, "model": False},
        {"name": "largest category alone", "world": 1, "only": largest, "model": False},
    ]
    if args.world == 1:
        del runs[1]
    with tempfile.TemporaryDirectory() as out_dir:
        records = {run["name"]: launch(args, run, out_dir) for run in runs}

    total = sum(sizes)
    state_mib = args.size**2 * 5 / MIB  # float32 score + uint8 mask per pixel
    print(f"machine: {machine()}; states on {args.device}, {args.threads} torch thread(s) per process")
    print(
        f"Real-IAD-shaped set: {args.categories} categories x {args.views} views, {min(sizes)}-{max(sizes)} maps "
        f"per category, {total} maps of {args.size} x {args.size} ({total * args.size**2 / 1e9:.2f} G pixels, "
        f"{total * state_mib:.0f} MiB of pixel states), batches of {args.batch}"
    )
    for name, ranks in records.items():
        for r, rec in enumerate(ranks):
            wall, cpu = (rec[key] / rec["received"] * 1e3 for key in ("metric_seconds", "metric_cpu_seconds"))
            device = (
                "" if rec["device_peak_mib"] is None else f", device peak {rec['device_peak_mib']:.0f} MiB"
            )
            print(
                f"  {name:>22} rank {r}: {rec['received']} maps, metrics {wall:.2f} ms/image wall, {cpu:.2f} "
                f"CPU; at most {rec['peak_held']} maps held ({rec['peak_held'] * state_mib:.0f} MiB of states), "
                f"largest category share {rec['largest_share']}; scored {rec['scored']} categories; "
                f"peak RSS +{rec['rss_growth_mib']:.0f} MiB{device}; "
                f"curves {rec['curves_mib']:.1f} MiB"
            )
    whole, alone = records["one process"][0], records["largest category alone"][0]
    print(
        f"memory: peak RSS growth, whole set / largest category alone = {whole['rss_growth_mib']:.0f} / "
        f"{alone['rss_growth_mib']:.0f} MiB = {whole['rss_growth_mib'] / max(alone['rss_growth_mib'], 1):.2f}x "
        f"(the set is {total / sizes[largest]:.1f}x that category)"
    )
    one = records["one process"][0]["per_category"]
    if args.world > 1:
        identical = all(rec["per_category"] == one for rec in records[f"{args.world} processes"])
        print(f"identical results, 1 vs {args.world} processes: {identical}")
    print(
        f"largest category alone gives its results in the whole set: "
        f"{alone['per_category']['c0'] == one[f'c{largest}']}"
    )
    metric = (whole["metric_seconds"] / whole["received"], whole["metric_cpu_seconds"] / whole["received"])
    model = whole["model_seconds"]
    print(
        f"tiny AnomalyCLIP ({args.model_size} px input, maps at {args.size} px, batch {args.batch}) on "
        f"{args.device}: {model[0] * 1e3:.1f} ms/image wall, {model[1] * 1e3:.1f} CPU; metrics / model = "
        f"{metric[0] / model[0]:.3f} wall, {metric[1] / model[1]:.3f} CPU"
    )
    budget = 1.0 / args.gpu_rate
    print(
        f"one process scores {1 / metric[0]:.0f} images/s here ({1 / metric[1]:.0f} per CPU second); a model at "
        f"{args.gpu_rate:.0f} images/s leaves {budget * 1e3:.2f} ms per image, which the metrics' "
        f"{metric[0] * 1e3:.2f} ms wall ({metric[1] * 1e3:.2f} CPU) "
        f"{'fit' if metric[0] <= budget else f'exceed {metric[0] / budget:.1f}x'} "
        f"(they run in the test step, after the model's batch)"
    )


if __name__ == "__main__":
    main()
