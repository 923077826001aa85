"""benchmarks/metrics.py runs on both score types and its exact and full-sort AUPRO agree;
benchmarks/ddp_eval_memory.py shows what finishing categories one by one saves under DDP;
benchmarks/scale_eval.py holds one category at a time and gives the same results in 1 and 2 processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def benchmark_output(script: str, *args: str) -> str:
    """The printed report of ``benchmarks/{script}`` run with ``args`` (which must succeed)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_metrics_benchmark_times_float16_and_float32_and_agrees_with_the_full_sort():
    out = benchmark_output("metrics.py", "--num-maps", "6", "--size", "96", "--repeat", "1")
    assert "summary float16:" in out and "summary float32:" in out
    gaps = [float(g) for g in re.findall(r"\|exact - full sort\| = ([0-9.e+-]+)", out)]
    assert len(gaps) == 2 and max(gaps) < 1e-9


@pytest.mark.slow
def test_ddp_memory_benchmark_holds_less_with_the_same_results():
    out = benchmark_output(
        "ddp_eval_memory.py", "--categories", "3", "--per-category", "8", "--size", "32", "--batch", "2"
    )
    stored = {
        mode: [
            int(n) for n in re.findall(rf"{mode} rank \d: \d+ samples received, at most (\d+) stored", out)
        ]
        for mode in ("end-of-epoch gather", "category by category")
    }
    assert stored["end-of-epoch gather"] == [15, 15]  # 30 samples: every one a process received
    assert max(stored["category by category"]) <= 6 + 2  # the largest category's share and a batch
    assert "identical results in both modes on every process: True" in out


@pytest.mark.slow
def test_scale_benchmark_holds_the_largest_category_and_gives_one_result():
    batch = 4
    out = benchmark_output(
        "scale_eval.py", "--categories", "4", "--samples", "2", "--size", "32", "--batch", str(batch),
        "--pool", "8", "--model-size", "32", "--model-batches", "1",
    )  # fmt: skip
    rows = re.findall(
        r"(\w[\w ]+) rank (\d): (\d+) maps, .* at most (\d+) maps held .*share (\d+); scored (\d+)", out
    )
    assert [(run.strip(), int(rank)) for run, rank, *_ in rows] == [
        ("one process", 0), ("2 processes", 0), ("2 processes", 1), ("largest category alone", 0)
    ]  # fmt: skip
    received, held, largest, scored = ([int(row[i]) for row in rows] for i in (2, 3, 4, 5))
    # 4 categories of 10-15 maps; the 2 processes get 23 each (the sampler pads 45 with one duplicate)
    assert received == [45, 23, 23, 15] and largest[0] == largest[3] == 15 and max(largest[1:3]) == 8
    # what a process holds is bounded by its share of the largest category (a batch may reach into the
    # next category before the last one is scored), not by the dataset
    assert all(h <= share + batch - 1 for h, share in zip(held, largest, strict=True)), held
    # under DDP each category is scored by one process (ids 0, 2 by rank 0; 1, 3 by rank 1), not by both
    assert scored == [4, 2, 2, 1]
    assert "identical results, 1 vs 2 processes: True" in out
    assert "largest category alone gives its results in the whole set: True" in out
