"""benchmarks/metrics.py runs on both score types and its exact and full-sort AUPRO agree;
benchmarks/ddp_eval_memory.py shows what finishing categories one by one saves under DDP."""

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
