"""Interrupted runs: evaluation uses the weights the training ended with, never a requeue checkpoint, and a
run interrupted anywhere resumes to bit-identical trained parameters and results."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from test_cli import FAST, write_experiment
from wandb_support import summary_json, wandb_records

from pipelines import runner
from pipelines.cli import main
from tests_support import (
    MAKE_TRAINER,
    SendAt,
    flip_a_bit_in_tensor_data,
    interrupt_training_at,
    make_trainer_with,
    zsad_test_from_run,
)

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


# --- exact resume ------------------------------------------------------------------------------------
def _main_with(args: list[str], event: SendAt | None) -> None:
    for key in [k for k in os.environ if k.startswith("WANDB_SERVICE")]:
        del os.environ[key]  # this process starts its own W&B service
    runner.make_trainer = make_trainer_with(event, [])
    sys.exit(main(args))


def _main_in_new_process(args: list[str], event: SendAt | None = None) -> int:
    """The exit code of ``main(args)`` (with ``event``) in a new process, as a requeued job runs: with its
    own W&B service, which ``event`` may stop without stopping this process's."""
    process = multiprocessing.get_context("spawn").Process(target=_main_with, args=(args, event))
    process.start()
    process.join(600)
    return process.exitcode


def _trained(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _assert_same_training(run_dir: Path, reference: Path, results: bool = True) -> None:
    trained, expected = _trained(run_dir), _trained(reference)
    assert trained.keys() == expected.keys() and trained
    assert all(torch.equal(trained[k], expected[k]) for k in expected), "trainable parameters differ"
    if results:
        assert _target_results(run_dir) == _target_results(reference)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


EXACT = [*FAST, "trainer.max_epochs=3"]  # 14 source images in batches of 4: 4 steps per epoch


@pytest.mark.slow
def test_interrupted_and_crashed_runs_resume_to_the_uninterrupted_result(
    tmp_path, synthetic_pair, monkeypatch, caplog
):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    reference, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    assert main(["run", str(experiment), *EXACT, f"run_dir={reference}"]) == 0

    args = ["run", str(experiment), *EXACT, f"run_dir={run_dir}"]
    status = run_dir / "status.json"
    # SLURM's warning signal at the end of epoch 0, Ctrl-C in the middle of epoch 1
    for event, code, state in (
        (SendAt(0, 3, signal.SIGUSR1), 128 + signal.SIGUSR1, "preempted"),
        (SendAt(1, 1, signal.SIGINT), 130, "interrupted"),
    ):
        interrupt_training_at(monkeypatch, event)
        assert main(args) == code
        assert json.loads(status.read_text())["state"] == state
    # a crash right after a time-based checkpoint (one after every step): the restart loses nothing
    interrupt_training_at(monkeypatch, SendAt(2, 2, None))
    with pytest.raises(RuntimeError, match="simulated node failure"):
        main([*args, "trainer.checkpoint_minutes=0"])
    assert json.loads(status.read_text())["state"] == "failed"
    assert len(list((run_dir / "checkpoints" / "resume").glob("step-*.ckpt"))) == 2  # the newest two kept

    # a kill during a write cannot leave a cut file (atomic renames); a newest one damaged on disk (one
    # bit of a tensor, which torch.load alone reads without a word) is skipped by its CRC-32s
    older, newest = sorted((run_dir / "checkpoints" / "resume").glob("step-*.ckpt"))
    flip_a_bit_in_tensor_data(newest)
    interrupt_training_at(monkeypatch, None)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert f"skipping checkpoint {newest}" in caplog.text and f"resuming from {older}" in caplog.text
    assert "do not match the CRC-32 stored with them" in caplog.text
    _assert_same_training(run_dir, reference)
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("hpc_ckpt_*"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_two_process_ddp_run_interrupted_mid_epoch_resumes_exactly(tmp_path, synthetic_pair, monkeypatch):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    ddp = [*FAST, "trainer.max_epochs=2", "trainer.strategy=ddp_spawn", "trainer.devices=2"]
    reference, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    assert main(["train", str(experiment), *ddp, f"run_dir={reference}"]) == 0
    args = ["train", str(experiment), *ddp, f"run_dir={run_dir}"]
    interrupt_training_at(monkeypatch, SendAt(0, 0, signal.SIGTERM))  # 2 steps per epoch and process
    assert main(args) == 128 + signal.SIGTERM
    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"
    interrupt_training_at(monkeypatch, None)
    assert main(args) == 0
    _assert_same_training(run_dir, reference, results=False)


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path, caplog):
    from lightning_modules.checkpoint_io import UnsafeCheckpointError
    from pipelines.checkpointing import AtomicCheckpointIO, find_resume_checkpoint

    marker, crafted = tmp_path / "ran", tmp_path / "checkpoints" / "resume" / "step-000000001.ckpt"
    crafted.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "loops": RunsCode(marker), "optimizer_states": []}, crafted)
    with caplog.at_level("WARNING"):
        assert find_resume_checkpoint(tmp_path) is None
    assert f"skipping checkpoint {crafted}" in caplog.text and "restarts from scratch" in caplog.text
    with pytest.raises(UnsafeCheckpointError):  # Lightning's own resume reads through this
        AtomicCheckpointIO().load_checkpoint(crafted)
    assert not marker.exists()


@pytest.mark.slow
def test_requeues_keep_one_wandb_run_that_records_them_and_the_whole_csv_log(
    tmp_path, synthetic_pair, monkeypatch
):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    run_dir = tmp_path / "w"
    overrides = [o for o in FAST if not o.startswith("logger")] + ["trainer.log_every_n_steps=1"]
    args = ["train", str(experiment), *overrides, "logger.wandb.mode=offline", f"run_dir={run_dir}"]
    interrupt_training_at(
        monkeypatch, SendAt(0, 1, signal.SIGUSR1)
    )  # SLURM's warning: W&B closes the session
    assert main(args) == 128 + signal.SIGUSR1
    # SIGTERM that reaches the W&B service too: still preempted, not a W&B connection error
    assert _main_in_new_process(args, SendAt(1, 1, signal.SIGTERM, to_wandb=True)) == 128 + signal.SIGTERM
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "preempted" and "SIGTERM" in status["error"]
    saved = run_dir / "checkpoints" / "resume" / "step-000000006.ckpt"  # what it saved, however it ended
    assert f"(saved {saved})" in status["error"] and status["error_file"] == str(saved)
    assert _main_in_new_process(args) == 0

    sessions = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([0-9a-z]+)(-\d+)?", p.name).group(1) for p in sessions}
    assert len(sessions) == 3 and len(ids) == 1  # one W&B run, three sessions
    first, _, last = (wandb_records(next(p.glob("run-*.wandb"))) for p in sessions)
    assert summary_json(first)["zsad/state"] == '"preempted"'
    assert [r.exit.exit_code for r in first if r.WhichOneof("record_type") == "exit"] == [
        128 + signal.SIGUSR1
    ]
    assert summary_json(last)["zsad/restarts"] == "2"
    # W&B 0.31 offline: a folder per session, each run record asking to resume the run; one
    # `wandb sync RUN/wandb` uploads them all, one after another (what zsad's closing line says)
    records = [[r.run for r in s if r.WhichOneof("record_type") == "run"] for s in (first, last)]
    assert all(run.resume and run.run_id == records[0][0].run_id for (run,) in records)
    assert len({(run.display_name, run.run_group) for (run,) in records}) == 1
    listed = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(run_dir / "wandb")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert f"Would sync {len(sessions)} run(s)" in listed.stdout + listed.stderr

    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    assert {row["epoch"] for row in rows if row.get("epoch")} == {"0", "1"}  # epoch 0 survived the restarts


@pytest.mark.slow
def test_a_run_stopped_during_evaluation_evaluates_its_final_weights_without_retraining(
    tmp_path, synthetic_pair, monkeypatch
):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    run_dir = tmp_path / "r"
    args = ["run", str(experiment), *FAST, "trainer.max_epochs=1", f"run_dir={run_dir}"]

    def preempted_evaluation(*args, **kwargs):
        raise RuntimeError("node lost during evaluation")

    monkeypatch.setattr(runner, "evaluate", preempted_evaluation)
    with pytest.raises(RuntimeError, match="node lost"):
        main(args)
    final = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    monkeypatch.undo()
    built = interrupt_training_at(monkeypatch, None)
    assert main(args) == 0
    assert built == [False]  # only the test Trainer: nothing was trained again
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == final
    assert zsad_test_from_run(experiment, run_dir, tmp_path / "again", [*FAST, "trainer.max_epochs=1"]) == 0
    assert _target_results(run_dir) == _target_results(tmp_path / "again")


def _tiny_job(tmp_path: Path, synthetic_pair, job: str, *overrides: str) -> tuple[Path, list[str]]:
    """The run folder and CLI arguments of a tiny ``job`` (train or run) on the synthetic pair."""
    experiment = write_experiment(tmp_path, *synthetic_pair)
    run_dir = tmp_path / "r"
    return run_dir, [job, str(experiment), *FAST, *overrides, f"run_dir={run_dir}"]


def _folder_contents(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_an_unfinished_run_resumes_only_with_its_own_config_and_logs_each_step_once(
    tmp_path, synthetic_pair, monkeypatch, capsys
):
    run_dir, args = _tiny_job(tmp_path, synthetic_pair, "train", "trainer.log_every_n_steps=1")
    interrupt_training_at(monkeypatch, SendAt(1, 1, signal.SIGINT))  # mid-epoch 1: steps 4 and 5 done
    assert main(args) == 130
    before = _folder_contents(run_dir)
    capsys.readouterr()

    # another learning rate would mix two trainings: refused, nothing in the folder changes
    assert main([*args, "method.lr=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"zsad: error: run folder {run_dir} holds an unfinished run of a different config")
    assert "method.lr" in err and "same config" in err and "\n" not in err
    assert main([*args, "trainer.max_epochs=1"]) == 2  # fewer epochs than trained for: refused too
    assert "differs in trainer.max_epochs)" in capsys.readouterr().err
    assert _folder_contents(run_dir) == before

    # the interruption logged its last step; a damaged newest checkpoint makes the resume redo steps 4
    # and 5, whose earlier rows go: every step is in the CSV once (checkpoint timing may differ)
    steps = [row["step"] for row in csv.DictReader((run_dir / "logs" / "metrics.csv").open())]
    assert steps == [str(step) for step in range(6)]
    older, newest = sorted((run_dir / "checkpoints" / "resume").glob("step-*.ckpt"))
    assert (older.name, newest.name) == ("step-000000004.ckpt", "step-000000006.ckpt")
    newest.write_bytes(newest.read_bytes()[:1000])
    interrupt_training_at(monkeypatch, None)
    assert main([*args, "trainer.checkpoint_minutes=0"]) == 0
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    assert [(row["epoch"], row["step"]) for row in rows] == [(str(step // 4), str(step)) for step in range(8)]

    # finished after a resume that changed only a key no result depends on: the original command is
    # this run, skipped (not refused as another config)
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(
        f"skipped: {run_dir} already holds a finished run of this config"
    )


@pytest.mark.slow
def test_a_resume_on_other_data_is_refused_naming_the_files_and_touched_files_are_no_change(
    tmp_path, synthetic_pair, monkeypatch, capsys
):
    """A training image deleted between sessions: the resume is refused naming it (one run trained on two
    datasets belongs to no experiment). Restored, and another image rewritten with the same bytes (a new
    modification time, e.g. a copy without -p), the run resumes and ends as the uninterrupted run."""
    source = shutil.copytree(synthetic_pair[0], tmp_path / "source")
    experiment = write_experiment(tmp_path, source, synthetic_pair[1])
    reference, run_dir = tmp_path / "reference", tmp_path / "r"
    assert main(["train", str(experiment), *EXACT, f"run_dir={reference}"]) == 0
    args = ["train", str(experiment), *EXACT, f"run_dir={run_dir}"]
    interrupt_training_at(monkeypatch, SendAt(1, 1, signal.SIGINT))
    assert main(args) == 130
    checkpoints = _folder_contents(run_dir / "checkpoints")

    deleted = source / "disc" / "test" / "good" / "001.png"
    kept = deleted.read_bytes()
    deleted.unlink()
    interrupt_training_at(monkeypatch, None)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"zsad: error: run folder {run_dir} holds an unfinished run trained on other data")
    assert "1 removed (disc/test/good/001.png)" in err and f"rm -r {run_dir / 'checkpoints'}" in err
    assert "\n" not in err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error_file"] == str(deleted)
    assert _folder_contents(run_dir / "checkpoints") == checkpoints  # nothing trained, nothing lost

    deleted.write_bytes(kept)  # the same bytes again, a new modification time
    touched = source / "weave" / "test" / "good" / "000.png"
    touched.write_bytes(touched.read_bytes())
    assert main(args) == 0
    _assert_same_training(run_dir, reference, results=False)


class SignalAtTestBatch(Callback):
    """Sends ``signum`` to this process after the first test batch."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def on_test_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.is_global_zero and not hasattr(self, "sent"):
            self.sent = True
            os.kill(os.getpid(), self.signum)


def test_sigusr1_reaches_a_process_waiting_for_the_others_inside_the_test_step(monkeypatch):
    """Under DDP the evaluator waits for the other processes when it finishes a category; the requeue
    signal stops it there as at the end of a batch (the others stop at theirs instead of joining)."""
    from types import SimpleNamespace

    from lightning_modules.metrics import AnomalyEvaluator
    from pipelines import checkpointing, stop_signals

    requeued: list[str] = []
    monkeypatch.setattr(stop_signals, "requeue_slurm_job", lambda: requeued.append("requeue"))
    monkeypatch.setattr(stop_signals, "_record", stop_signals._Record())  # this test's signal stays here
    callback = checkpointing.RequeueEvaluation()
    module = SimpleNamespace(evaluator=AnomalyEvaluator(["a"]))
    callback.on_test_batch_start(SimpleNamespace(is_global_zero=True), module, {}, 0)
    module.evaluator.while_waiting()  # no signal yet: keeps waiting
    callback._on_signal(signal.SIGUSR1, None)
    with pytest.raises(checkpointing.TrainingInterrupted, match="SIGUSR1"):
        module.evaluator.while_waiting()
    assert requeued == ["requeue"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_sigusr1_during_evaluation_under_slurm_is_zsads_requeue_not_lightnings(
    tmp_path, synthetic_pair, monkeypatch, caplog
):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from pipelines import stop_signals

    run_dir, args = _tiny_job(tmp_path, synthetic_pair, "run", "trainer.max_epochs=1")
    for key, value in SLURM_LIKE_ENV.items():
        monkeypatch.setenv(key, value)
    requeued: list[str] = []
    monkeypatch.setattr(stop_signals, "requeue_slurm_job", lambda: requeued.append("requeue"))
    trainers = []

    def make_trainer(cfg, run_dir, loggers, training, **kwargs):
        if not training:
            kwargs["callbacks"] = [SignalAtTestBatch(signal.SIGUSR1), *(kwargs.get("callbacks") or [])]
        trainers.append(MAKE_TRAINER(cfg, run_dir, loggers, training, **kwargs))
        return trainers[-1]

    monkeypatch.setattr(runner, "make_trainer", make_trainer)
    with caplog.at_level("INFO"):
        assert main(args) == 128 + signal.SIGUSR1
    environments = [t._accelerator_connector.cluster_environment for t in trainers]
    assert len(environments) == 2 and all(isinstance(e, SLURMEnvironment) for e in environments)
    assert not any(e.auto_requeue for e in environments)
    assert "auto-requeueing enabled" not in caplog.text
    assert requeued == ["requeue"]  # zsad's own requeue, once
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "preempted" and "SIGUSR1" in status["error"]
    assert not list(run_dir.rglob("hpc_ckpt_*")) and not (run_dir / "results.json").exists()
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # handlers restored

    # the requeued job evaluates the final weights again, without training
    built = interrupt_training_at(monkeypatch, None)
    assert main(args) == 0 and built == [False]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


def test_a_checkpoints_training_setting_is_the_one_it_carries_else_its_run_folders(tmp_path):
    """ExactResume's marker carries the training setting; an older checkpoint without it gives its run
    folder's config.yaml sections; the authors' weights or a file outside a run folder give none."""
    from pipelines.checkpointing import RESUME_KEY
    from pipelines.trained_with import checkpoint_setting, trained_setting

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = {"name": "x", "seed": 3, "method": {"name": "vand", "lr": 0.1}, "source": {"name": "mvtec"},
              "trainer": {"max_epochs": 2}, "targets": [{"name": "visa"}], "eval": {"save_maps": False}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    carried = {"method": {"name": "vand", "lr": 0.5}}
    torch.save({RESUME_KEY: {"format": 1, "setting": carried}}, run / "checkpoints" / "new.ckpt")
    torch.save({RESUME_KEY: {"format": 1}}, run / "checkpoints" / "old.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "theirs.pth")
    assert checkpoint_setting(run / "checkpoints" / "new.ckpt") == carried
    assert checkpoint_setting(run / "checkpoints" / "old.ckpt") == trained_setting(config)
    assert trained_setting(config) == {k: config[k] for k in ("method", "source", "trainer")}
    assert checkpoint_setting(tmp_path / "theirs.pth") is None and checkpoint_setting(None) is None


def test_a_checkpoint_is_not_evaluated_under_another_training_source(tmp_path):
    """`zsad test visa_to_mvtec checkpoint=<trained on MVTec AD>` would file MVTec-trained numbers under
    VisA: refused in one line; the same source, no source in the config, or weights of unknown training pass."""
    from datamodules.config import DataConfig
    from datamodules.errors import ConfigError
    from pipelines.checkpointing import RESUME_KEY
    from pipelines.trained_with import refuse_other_training_source

    path = tmp_path / "last.ckpt"
    content = {RESUME_KEY: {"format": 1, "setting": {"source": {"name": "mvtec", "train_shots": None}}}}
    with pytest.raises(
        ConfigError, match=r"trained on mvtec and this config's source is visa: .* source=mvtec"
    ):
        refuse_other_training_source(path, content, [DataConfig(name="visa", root="/v")])
    with pytest.raises(ConfigError, match=r"trained on mvtec and this config's source is mvtec \(16-shot\)"):
        refuse_other_training_source(path, content, [DataConfig(name="mvtec", root="/m", train_shots=16)])
    refuse_other_training_source(path, content, [DataConfig(name="mvtec", root="/elsewhere")])
    refuse_other_training_source(path, content, [])
    refuse_other_training_source(
        tmp_path / "theirs.pth", {"state_dict": {}}, [DataConfig(name="visa", root="/v")]
    )
    several = {RESUME_KEY: {"format": 1, "setting": {"source": [{"name": "mvtec"}, {"name": "colondb"}]}}}
    with pytest.raises(ConfigError, match=r"trained on mvtec\+colondb .* source=\[mvtec,colondb\]"):
        refuse_other_training_source(path, several, [DataConfig(name="visa", root="/v")])


def test_a_few_shot_checkpoint_is_not_evaluated_under_another_draw_of_its_training_set(tmp_path):
    """A checkpoint trained on the 16-shot draw of train_shots_seed=0, tested under a config that says
    train_shots_seed=1, passed: results.json's sources recorded the other draw (and run names, reports filed
    the numbers under it). Refused; the same draw, or a checkpoint that records no draw seed, passes."""
    from datamodules.config import DataConfig
    from datamodules.errors import ConfigError
    from pipelines.checkpointing import RESUME_KEY
    from pipelines.trained_with import refuse_other_training_source

    path = tmp_path / "last.ckpt"
    source = {"name": "mvtec", "train_shots": 16, "train_shots_seed": 0}
    content = {RESUME_KEY: {"format": 1, "setting": {"source": source}}}
    with pytest.raises(ConfigError, match=r"seed=0\) and .*seed=1\): .*source.train_shots_seed to match"):
        refuse_other_training_source(
            path, content, [DataConfig(name="mvtec", root="/m", train_shots=16, train_shots_seed=1)]
        )
    refuse_other_training_source(
        path, content, [DataConfig(name="mvtec", root="/m", train_shots=16, train_shots_seed=0)]
    )
    older = {RESUME_KEY: {"format": 1, "setting": {"source": {"name": "mvtec", "train_shots": 16}}}}
    refuse_other_training_source(
        path, older, [DataConfig(name="mvtec", root="/m", train_shots=16, train_shots_seed=1)]
    )
