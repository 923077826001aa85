"""Writing small sweeps over the synthetic datasets, and whether a real SLURM is up (shared by the sweep
and SLURM tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml


def write_sweep(
    tmp_path: Path,
    source: Path,
    target: Path,
    seeds: list[int],
    epochs: int = 1,
    extra: dict | None = None,
    name: str = "s",
) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for key, root in (("src", source), ("tgt", target)):
        (data / f"{key}.yaml").write_text(
            f"name: synthetic\nroot: {root}\nbatch_size: 4\neval_batch_size: 8\nnum_workers: 0\n"
        )
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        f"defaults:\n  method: anomalyclip_tiny\n  source: {data / 'src.yaml'}\n  targets: [{data / 'tgt.yaml'}]\n"
        "name: sweep_test\ntrainer: {accelerator: cpu, devices: '1', enable_progress_bar: false, log_every_n_steps: 1}\n"
    )
    sweep = {
        "name": name,
        "experiment": str(experiment),
        "grid": {"seed": seeds},
        "overrides": [
            f"trainer.max_epochs={epochs}",
            "logger.wandb.mode=disabled",
            "method.backbone.image_size=32",
        ],
        "output_dir": str(tmp_path / "sweeps"),
        "slurm": {
            "gpus_per_node": 0,
            "cpus_per_task": 1,
            "time": "00:15:00",
            "max_concurrent": 2,
            "partition": "debug",
        },
        **(extra or {}),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def slurm_problem(nodes: int = 1) -> str | None:
    """Why the SLURM that ``SLURM_CONF`` (default: /etc/slurm) names cannot run a test that needs ``nodes``
    nodes; None when enough nodes are up."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM client tools (sbatch, sinfo) are not installed"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as error:
        return f"sinfo failed: {error}"
    if sum(state.startswith(("idle", "mixed", "alloc")) for state in states) < nodes:
        return (
            f"fewer than {nodes} SLURM node(s) up (sinfo: {' '.join(states) or 'nothing'}); start "
            f"{'one with .ci/start_slurm.sh' if nodes == 1 else 'two with .ci/start_slurm_two_nodes.sh'}"
        )
    return None


def require_slurm(problem: str | None) -> None:
    """Skip the test for ``problem``; fail it instead where SLURM must be up (CI, ZSAD_REQUIRE_SLURM=1)."""
    if problem:
        if os.environ.get("CI") == "true" or os.environ.get("ZSAD_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM is required here but unavailable: {problem}")
        pytest.skip(problem)


def wait_for(condition, timeout: float, what: str, interval: float = 2.0):
    """The first true value of ``condition()``, polled every ``interval`` s; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
