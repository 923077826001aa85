"""Interrupted runs: evaluation uses the weights the training ended with, never a requeue checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import FAST, write_experiment

from pipelines.cli import main
from tests_support import zsad_test_from_run

SLURM_LIKE_ENV = {  # what Lightning's SLURMEnvironment.detect() looks for, as in an sbatch task
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NAME": "zsad-test",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def _plant_requeue_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """A Lightning requeue checkpoint (``hpc_ckpt_1.ckpt``) in ``folder`` with other trained weights."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(7)
    state["state_dict"] = {
        k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in state["state_dict"].items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "hpc_ckpt_1.ckpt")
    return folder / "hpc_ckpt_1.ckpt"


def _target_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_evaluation_under_slurm_ignores_requeue_checkpoints(tmp_path, synthetic_pair, monkeypatch):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    fast = [*FAST, "trainer.max_epochs=1"]
    assert main(["train", str(experiment), *fast, f"run_dir={tmp_path / 'train'}"]) == 0
    assert zsad_test_from_run(experiment, tmp_path / "train", tmp_path / "plain", fast) == 0

    planted = _plant_requeue_checkpoint(tmp_path / "train" / "checkpoints" / "last.ckpt", tmp_path / "slurm")
    # the planted weights score differently, so loading them would show in the results
    assert (
        main(["test", str(experiment), *fast, f"checkpoint={planted}", f"run_dir={tmp_path / 'other'}"]) == 0
    )
    assert _target_results(tmp_path / "other")["mean"] != _target_results(tmp_path / "plain")["mean"]

    for key, value in SLURM_LIKE_ENV.items():
        monkeypatch.setenv(key, value)
    assert zsad_test_from_run(experiment, tmp_path / "train", tmp_path / "slurm", fast) == 0
    assert (
        _target_results(tmp_path / "slurm")["categories"] == _target_results(tmp_path / "plain")["categories"]
    )
