"""A stop signal at any moment of a job ends it in a defined, resumable state (pipelines/stop_signals.py):
between Trainers in a real ``zsad`` process, at the edge of a Trainer, and the guard's own rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback
from test_cli import FAST, write_experiment
from test_resume import _target_results

from pipelines import runner, stop_signals
from pipelines.cli import main
from pipelines.run_state import read_lock, read_status
from pipelines.stop_signals import TrainingInterrupted, deferred, stop_signal_guard
from tests_support import MAKE_TRAINER, interrupt_training_at

ROOT = Path(runner.__file__).parents[1]
ONE_EPOCH = [*FAST, "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synthetic_pair) -> tuple[Path, Path]:
    """The experiment file and the folder of its uninterrupted run."""
    tmp_path = tmp_path_factory.mktemp("reference")
    experiment = write_experiment(tmp_path, *synthetic_pair)
    assert main(["run", str(experiment), *ONE_EPOCH, f"run_dir={tmp_path / 'run'}"]) == 0
    return experiment, tmp_path / "run"


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the job ended ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _fake_scontrol(folder: Path) -> Path:
    """An ``scontrol`` that records its arguments in ``folder/scontrol.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "scontrol.log"}\n')
    script.chmod(0o755)
    return folder / "scontrol.log"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pause_at", "signum", "state", "trained_before"),
    [
        ("evaluate", signal.SIGUSR1, "preempted", True),  # SLURM's warning after training, before testing
        ("find_resume_checkpoint", signal.SIGTERM, "preempted", False),  # the source indexed, not trained
        ("job.make_loggers", signal.SIGINT, "interrupted", False),  # the folder owned, loggers not open
    ],
)
def test_a_stop_signal_between_trainers_leaves_a_resumable_run(
    tmp_path, reference, monkeypatch, pause_at, signum, state, trained_before
):
    experiment, reference_dir = reference
    run_dir = tmp_path / "run"
    args = ["run", str(experiment), *ONE_EPOCH, f"run_dir={run_dir}"]
    marker, requeues = tmp_path / "paused", _fake_scontrol(tmp_path / "bin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}  # fmt: skip
    with (tmp_path / "job.log").open("w") as log:
        job = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("paused_job.py")), str(marker), pause_at, *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_for(marker.is_file, job, f"the job to pause at {pause_at}")
            assert read_status(run_dir)["state"] == "running" and read_lock(run_dir)["pid"] == job.pid
            job.send_signal(signum)
            code = job.wait(timeout=300)
        finally:
            if job.poll() is None:
                job.kill()
    output = (tmp_path / "job.log").read_text()
    assert code == 128 + signum, output
    status = read_status(run_dir)
    assert status["state"] == state and signal.Signals(signum).name in status["error"], status
    assert read_lock(run_dir) is None  # released
    assert not (run_dir / "results.json").exists() and not list(run_dir.rglob("*.tmp"))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() == trained_before
    requeued = requeues.read_text().split("\n") if requeues.exists() else []
    assert requeued == (["requeue 4242", ""] if signum == signal.SIGUSR1 else [])
    assert f"{state} by {signal.Signals(signum).name}" in output

    # the same command finishes; training that ended is not redone; results as if never stopped
    final = last.read_bytes() if trained_before else None
    built = interrupt_training_at(monkeypatch, None)
    assert main(args) == 0
    assert built == ([False] if trained_before else [True, False])
    assert final is None or last.read_bytes() == final
    assert _target_results(run_dir) == _target_results(reference_dir)
    assert read_status(run_dir)["state"] == "finished" and read_lock(run_dir) is None


class SignalAtTrainEnd(Callback):
    """SIGUSR1 to this process once training ended: after the last check of ExactResume."""

    def on_train_end(self, trainer, pl_module) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow
def test_a_signal_after_the_trainers_last_check_stops_the_job_as_the_trainer_returns(
    tmp_path, reference, monkeypatch
):
    experiment, reference_dir = reference
    run_dir = tmp_path / "run"
    args = ["run", str(experiment), *ONE_EPOCH, f"run_dir={run_dir}"]
    requeued: list[str] = []
    monkeypatch.setattr(stop_signals, "requeue_slurm_job", lambda: requeued.append("requeue"))

    def make_trainer(cfg, run_dir, loggers, training, **kwargs):
        if training:
            kwargs["callbacks"] = [SignalAtTrainEnd(), *(kwargs.get("callbacks") or [])]
        return MAKE_TRAINER(cfg, run_dir, loggers, training, **kwargs)

    monkeypatch.setattr(runner, "make_trainer", make_trainer)
    assert main(args) == 128 + signal.SIGUSR1
    assert requeued == ["requeue"]
    assert read_status(run_dir)["state"] == "preempted" and read_lock(run_dir) is None
    assert not (run_dir / "results.json").exists()
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # the guard's handlers are gone

    built = interrupt_training_at(monkeypatch, None)
    assert main(args) == 0 and built == [False]  # the complete last.ckpt: evaluated, not trained again
    assert _target_results(run_dir) == _target_results(reference_dir)


# --- the guard's rules ---------------------------------------------------------------------------------
def test_between_trainers_a_stop_signal_stops_at_once_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    reached = []
    with pytest.raises(TrainingInterrupted) as stopped, stop_signal_guard():
        signal.raise_signal(signal.SIGTERM)
        reached.append("after the signal")
    assert not reached and stopped.value.state == "preempted" and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_deferred_step_completes_and_the_signal_stops_the_job_when_it_ends(monkeypatch):
    requeued: list[str] = []
    monkeypatch.setattr(stop_signals, "requeue_slurm_job", lambda: requeued.append("requeue"))
    steps = []
    with pytest.raises(TrainingInterrupted) as stopped, stop_signal_guard():
        with deferred():
            signal.raise_signal(signal.SIGUSR1)
            steps.append("finished the step")
        steps.append("went on")
    assert steps == ["finished the step"] and stopped.value.signal_name == "SIGUSR1"
    assert requeued == ["requeue"]  # stopped by the guard: the guard requeues

    with stop_signal_guard():  # a step after which the job is over anyway: the signal changes nothing
        with deferred(stop_after=False):
            signal.raise_signal(signal.SIGTERM)
        steps.append("ended normally")
    assert steps[-1] == "ended normally"


def test_a_second_ctrl_c_stops_at_once_even_in_a_deferred_step(capsys):
    steps = []
    with pytest.raises(KeyboardInterrupt) as stopped, stop_signal_guard(), deferred():
        signal.raise_signal(signal.SIGINT)
        steps.append("first Ctrl-C recorded")
        signal.raise_signal(signal.SIGINT)
        steps.append("not reached")
    assert steps == ["first Ctrl-C recorded"] and not isinstance(stopped.value, TrainingInterrupted)
    assert "Ctrl-C again to stop at once" in capsys.readouterr().out


def test_under_a_trainer_sigterm_waits_for_it_but_ctrl_c_stops_at_once():
    steps = []
    # as around a Trainer: its own checks, or its end, decide
    with pytest.raises(TrainingInterrupted) as stopped, stop_signal_guard(), deferred(sigint=False):
        signal.raise_signal(signal.SIGTERM)
        steps.append("the Trainer went on")
    assert steps == ["the Trainer went on"] and stopped.value.signal_name == "SIGTERM"
    with pytest.raises(TrainingInterrupted) as stopped, stop_signal_guard(), deferred(sigint=False):
        signal.raise_signal(signal.SIGINT)  # a KeyboardInterrupt, as Lightning always got it
        steps.append("not reached")
    assert steps == ["the Trainer went on"] and stopped.value.state == "interrupted"


def test_a_stop_that_saved_a_checkpoint_names_it_whatever_error_ends_the_job(monkeypatch):
    """Under SLURM the SIGTERM also stops W&B's service, so W&B's teardown fails after the training saved
    and raised its interruption: the job still ends as that interruption, naming the checkpoint."""
    monkeypatch.setattr(stop_signals, "_record", stop_signals._Record())
    stop_signals.note_signal(signal.SIGTERM)
    try:
        try:
            raise TrainingInterrupted("SIGTERM", "RUN/checkpoints/resume/step-000004254.ckpt")
        except TrainingInterrupted:
            raise ConnectionResetError("W&B's service is gone") from None  # no __cause__, a __context__
    except ConnectionResetError as error:
        recognised = TrainingInterrupted.recognise(error)
    assert str(recognised).startswith(
        "preempted by SIGTERM (saved RUN/checkpoints/resume/step-000004254.ckpt)"
    )
    # the interruption itself lost (an error of another kind after the save): the record still knows
    stop_signals.note_saved("RUN/checkpoints/resume/step-000004254.ckpt")
    assert TrainingInterrupted.recognise(OSError("teardown failed")).checkpoint.endswith(
        "step-000004254.ckpt"
    )
