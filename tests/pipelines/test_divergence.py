"""A training whose loss stops being finite stops there, on every process, with one line; NaN scores in an
evaluation are one line too. Nothing of the diverged weights is saved or evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_cli import FAST, write_experiment

from lightning_modules.checkpoint_io import safe_torch_load
from pipelines.cli import main
from tests_support import interrupt_training_at

pytestmark = pytest.mark.slow


def _fill_nan(value) -> None:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        value.fill_(float("nan"))
    elif isinstance(value, dict):
        for item in value.values():
            _fill_nan(item)


class NaNInputsAt(Callback):
    """Every floating tensor of training batch ``batch`` of ``epoch`` becomes NaN, on process ``rank``
    only: that process's loss is NaN, the others' finite (until the averaged gradients reach them)."""

    def __init__(self, epoch: int, batch: int, rank: int) -> None:
        self.epoch, self.batch, self.rank = epoch, batch, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx, trainer.global_rank) == (self.epoch, self.batch, self.rank):
            _fill_nan(batch)


def _assert_stopped_cleanly(run_dir: Path, err: str, step: str) -> None:
    assert err.startswith(f"zsad: error: training diverged at {step}: ") and "\n" not in err, err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("TrainingDiverged: training diverged")
    assert not (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "results.json").exists()
    for checkpoint in (run_dir / "checkpoints").rglob("*.ckpt"):  # only weights from before the NaN
        assert all(torch.isfinite(v).all() for v in safe_torch_load(checkpoint)["state_dict"].values())


def test_a_learning_rate_that_diverges_stops_training_with_one_line(tmp_path, synthetic_pair, capsys):
    run_dir = tmp_path / "r"
    experiment = write_experiment(tmp_path, *synthetic_pair)
    assert main(["run", str(experiment), *FAST, "method.lr=1e6", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    _assert_stopped_cleanly(run_dir, err, "epoch 0 step 1")
    assert "loss = nan; lower method.lr (now 1e+06)" in err


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_a_nan_on_one_ddp_process_stops_every_process_at_that_step(
    tmp_path, synthetic_pair, monkeypatch, capsys
):
    run_dir = tmp_path / "r"
    experiment = write_experiment(tmp_path, *synthetic_pair)
    ddp = [*FAST, "trainer.strategy=ddp_spawn", "trainer.devices=2", "method.cache_features=false"]
    interrupt_training_at(monkeypatch, NaNInputsAt(epoch=1, batch=0, rank=1))  # 2 steps per epoch and process
    assert main(["train", str(experiment), *ddp, f"run_dir={run_dir}"]) == 2
    _assert_stopped_cleanly(run_dir, capsys.readouterr().err.strip().splitlines()[-1], "epoch 1 step 2")
    assert [p.name for p in (run_dir / "checkpoints" / "resume").iterdir()] == ["step-000000002.ckpt"]


def test_nan_scores_in_an_evaluation_are_one_line(tmp_path, synthetic_pair, capsys):
    experiment = write_experiment(tmp_path, *synthetic_pair)
    trained = tmp_path / "trained"
    assert main(["train", str(experiment), *FAST, "trainer.max_epochs=1", f"run_dir={trained}"]) == 0
    checkpoint = safe_torch_load(trained / "checkpoints" / "last.ckpt")
    checkpoint["state_dict"] = {
        k: torch.full_like(v, float("nan")) for k, v in checkpoint["state_dict"].items()
    }
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    args = [
        "test",
        str(experiment),
        *FAST,
        f"checkpoint={tmp_path / 'nan.ckpt'}",
        f"run_dir={tmp_path / 'e'}",
    ]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("zsad: error: the method's image scores contain NaN for ") and "\n" not in err
    assert json.loads((tmp_path / "e" / "status.json").read_text())["state"] == "failed"
    assert not (tmp_path / "e" / "results.json").exists()
