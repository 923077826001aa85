"""Sweeps through a real SLURM (sbatch array + exec'd srun): requeue by signal and by time limit, a task
killed with -9 and resubmitted, duplicate submissions, status, and results equal to an uninterrupted run.

`.ci/run` starts a single-node SLURM on loopback (`.ci/start_slurm.sh`); there these tests must run and
fail loudly if SLURM is not up. Elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sweep_helpers import require_slurm, slurm_problem, wait_for, write_sweep

from pipelines import sweep
from pipelines.cli import main
from pipelines.run_state import is_finished

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm() -> None:
    require_slurm(slurm_problem())


def _job_field(task: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", task], capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S*)", out)
    return match.group(1) if match else ""


def _requeued_and_pending(task: str) -> bool:
    return _job_field(task, "JobState") == "PENDING" and int(_job_field(task, "Restarts") or 0) >= 1


def _release(task: str, *settings: str) -> None:
    """SLURM holds a requeued job for about two minutes before it may start again (EligibleTime); what
    is tested is that it resumes, not that wait. The hold is set when the requeue completes, which may
    be just after the job shows as pending: update until the job is eligible now."""

    def released() -> bool:
        subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now", *settings], check=True)
        if _job_field(task, "JobState") != "PENDING":
            return True
        eligible = _job_field(task, "EligibleTime")
        return eligible[:1].isdigit() and datetime.datetime.fromisoformat(eligible) <= datetime.datetime.now()

    wait_for(released, 120, f"SLURM to accept the release of {task}", interval=3)


def _logs(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((directory / "slurm-logs").glob("*.out")))


def _training(run_dir: Path) -> bool:
    """Training is under way (past its first epoch, signal handlers installed): a resume checkpoint
    was written."""
    return bool(list(run_dir.glob("checkpoints/resume/*.ckpt")))


def _signalled(pid: int) -> bool:
    """Whether a stopped process received SIGUSR1: it is pending, or the sender continued the process
    (slurmstepd sends SIGCONT with the signals it delivers), or the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return True
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    pending = int(fields.get("SigPnd", "0").strip(), 16) | int(fields.get("ShdPnd", "0").strip(), 16)
    return bool(pending & (1 << (signal.SIGUSR1 - 1))) or not fields.get("State", "").strip().startswith("T")


def _outcome(run_dir: Path) -> tuple[dict, dict]:
    """What must not depend on interruptions: every metric of every target, and the trainable parameters."""
    from lightning_modules.checkpoint_io import safe_torch_load

    results = json.loads((run_dir / "results.json").read_text())
    metrics = {
        key: {"categories": t["categories"], "mean": t["mean"]} for key, t in results["targets"].items()
    }
    return metrics, safe_torch_load(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.timeout(1800)
def test_requeued_timed_out_and_killed_tasks_end_as_the_uninterrupted_run(
    slurm, tmp_path, synthetic_pair, capsys
):
    """Four tasks train the same run (same config and seed; only the experiment's name differs): task 0
    is requeued by SIGUSR1 sent to the batch step (`scancel --batch`, which srun forwards), task 1 by its
    time limit (`--signal=SIGUSR1@300`; the limit is lowered once it trains), task 2 is killed with -9
    and submitted again, task 3 runs uninterrupted. All end with the metrics and trainable parameters of
    task 3, bit for bit; `sweep status` follows them and a second submit of busy runs is refused.

    Training is short (8 epochs of 4 steps); tasks 0 and 1 are paused (SIGSTOP) as soon as they train, so
    that however fast the machine, the signals reach them mid-training."""
    extra = {
        "grid": {"seed": [5], "name": ["signal", "timelimit", "kill9", "reference"]},
        "overrides": ["trainer.max_epochs=8", "logger.wandb.mode=disabled", "method.backbone.image_size=32",
                      "method.cache_features=false"],
        "slurm": {"gpus_per_node": 0, "cpus_per_task": 1, "time": "30", "signal_seconds": 300,
                  "max_concurrent": 4, "partition": "debug"},
    }  # fmt: skip
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[5], name="interrupt", extra=extra)
    cfg, _ = sweep.load_sweep(path)
    directory, runs = sweep.sweep_dir(cfg), sweep.expand(cfg)
    run_dirs = [Path(r.run_dir) for r in runs]
    assert main(["sweep", "submit", str(path)]) == 0
    job = sweep.submissions(directory)[-1]["job_id"]
    assert "#SBATCH --array=0-3%4" in Path(sweep.submissions(directory)[-1]["script"]).read_text()
    tasks = [f"{job}_{i}" for i in range(4)]

    def state(index: int) -> str:
        return sweep.status(cfg)[index]["state"]

    def pid(index: int) -> int:
        return json.loads((run_dirs[index] / "run.lock").read_text())["pid"]

    # the node has CPUs for two tasks: 2 and 3 wait while 0 and 1 train
    assert state(3) == "queued"
    capsys.readouterr()
    assert main(["sweep", "submit", str(path)]) == 2  # every unfinished run is queued or running
    assert f"scancel {job}" in capsys.readouterr().err
    paused: dict[int, int] = {}

    def pause_when_training() -> bool:
        for index in (0, 1):
            if index not in paused and _training(run_dirs[index]):
                paused[index] = pid(index)
                os.kill(paused[index], signal.SIGSTOP)
        return len(paused) == 2

    wait_for(pause_when_training, 600, "tasks 0 and 1 to train", interval=0.1)
    assert state(0) == "running" and state(1) == "running"
    try:
        # task 0: SIGUSR1 to the batch step only. scancel retries while the job is being requeued (which
        # the signal itself starts); it is stopped once the requeue is seen, so that it cannot signal the
        # restarted task
        scancel = subprocess.Popen(["scancel", "--batch", "--signal=USR1", tasks[0]])
        # task 1: a time limit 2-3 minutes away, i.e. inside the signal's 300 s; SLURM checks time limits
        # every 30 s
        runtime = re.split("[:-]", _job_field(tasks[1], "RunTime"))
        elapsed = sum(int(x) * f for x, f in zip(reversed(runtime), (1, 60, 3600), strict=False))
        subprocess.run(
            ["scontrol", "update", f"JobId={tasks[1]}", f"TimeLimit={elapsed // 60 + 3}"], check=True
        )
        wait_for(lambda: all(_signalled(p) for p in paused.values()), 120, "SIGUSR1 to reach tasks 0 and 1")
    finally:
        for process in paused.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGCONT)
    wait_for(lambda: _requeued_and_pending(tasks[0]), 300, "task 0 to be requeued")
    assert state(0) == "preempted"
    if scancel.poll() is None:
        scancel.terminate()
    scancel.wait(timeout=60)
    _release(tasks[0])
    wait_for(lambda: _requeued_and_pending(tasks[1]), 300, "task 1 to be requeued")
    _release(tasks[1], "TimeLimit=30")

    # task 2: killed with -9 once it trains, then submitted again (the others are left out)
    wait_for(lambda: _training(run_dirs[2]), 600, "task 2 to train", interval=0.1)
    os.kill(pid(2), signal.SIGKILL)
    wait_for(lambda: state(2) == "interrupted", 300, "task 2 to be seen as interrupted")
    assert main(["sweep", "submit", str(path)]) == 0
    resubmitted = sweep.submissions(directory)[-1]
    assert resubmitted["ids"] == [runs[2].id]  # the runs still queued or running are left out

    wait_for(lambda: all(is_finished(d) for d in run_dirs), 1200, "every run to finish", interval=5)
    assert [r["state"] for r in sweep.status(cfg)] == ["finished"] * 4
    for index in (0, 1):
        status = json.loads((run_dirs[index] / "status.json").read_text())
        assert status["slurm_job"] == tasks[index] and status["slurm_restarts"] >= 1, status
    assert json.loads((run_dirs[2] / "status.json").read_text())["slurm_job"] == f"{resubmitted['job_id']}_2"
    reference_metrics, reference_weights = _outcome(run_dirs[3])
    for index in (0, 1, 2):
        metrics, weights = _outcome(run_dirs[index])
        assert metrics == reference_metrics, (index, _logs(directory))
        assert weights.keys() == reference_weights.keys()
        different = [k for k in weights if not torch.equal(weights[k], reference_weights[k])]
        assert not different, (index, different)

    capsys.readouterr()
    assert main(["sweep", "status", str(path)]) == 0
    assert "4 finished" in capsys.readouterr().out
    assert main(["sweep", "submit", str(path)]) == 0  # nothing left: no new job
    assert "nothing to submit" in capsys.readouterr().out
    assert main(["report", str(path), "--wandb-mode", "disabled"]) == 0
    assert "| synthetic |" in (directory / "report.md").read_text()


def _scancel_submitted(directory: Path) -> None:
    jobs = [entry["job_id"] for entry in sweep.submissions(directory)]
    if jobs:
        subprocess.run(["scancel", *jobs], check=False)


# `zsad sweep submit` in a process whose first submit pauses after asking SLURM about earlier jobs (and
# before submitting) until the second has tried to start its own: the worst moment for two submits.
_RACING_SUBMIT = """
import sys, time
from pathlib import Path
from pipelines import run_state, sweep
from pipelines.cli import main
gate, role, path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
guard, view = run_state.folder_guard, sweep.scheduler_view
def trying(directory):
    (gate / f"{role}-trying").touch()
    return guard(directory)
def asked(cfg, runs):
    answer = view(cfg, runs)
    (gate / f"{role}-asked").touch()
    deadline = time.monotonic() + 120
    while role == "first" and not (gate / "second-trying").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return answer
run_state.folder_guard, sweep.scheduler_view = trying, asked
sys.exit(main(["sweep", "submit", path]))
"""


@pytest.mark.timeout(600)
def test_concurrent_submits_of_one_sweep_queue_each_run_once(slurm, tmp_path, synthetic_pair):
    """Two `zsad sweep submit` of the same sweep at once, the second starting while the first has asked
    SLURM and not yet submitted: the second waits for the first (the sweep folder's lock), sees its runs
    queued and is refused; one script, one job."""
    extra = {"slurm": {"gpus_per_node": 0, "cpus_per_task": 1, "time": "10", "partition": "debug",
                       "extra_sbatch": ["--hold"]}}  # fmt: skip  # held: the jobs never start
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1, 2], name="twice", extra=extra)
    cfg, _ = sweep.load_sweep(path)
    directory, gate = sweep.sweep_dir(cfg), tmp_path / "gate"
    gate.mkdir()
    root = Path(sweep.__file__).resolve().parents[1]

    def start(role: str) -> subprocess.Popen:
        command = [sys.executable, "-c", _RACING_SUBMIT, str(gate), role, str(path)]
        return subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start("first")
    try:
        wait_for(
            lambda: (gate / "first-asked").exists() or first.poll() is not None,
            300,
            "the first submit to ask SLURM",
            0.1,
        )
        second = start("second")
        (out, err), (out2, err2) = first.communicate(timeout=300), second.communicate(timeout=300)
        assert (first.returncode, second.returncode) == (0, 2), (out, err, out2, err2)
        assert "already queued or running" in err2 and "\n" not in err2.strip()
        (entry,) = sweep.submissions(directory)
        assert sorted(entry["ids"]) == sorted(run.id for run in sweep.expand(cfg))
        assert len(list(directory.glob("submit-*.sbatch"))) == 1
        assert [row["state"] for row in sweep.status(cfg)] == ["queued", "queued"]
    finally:
        _scancel_submitted(directory)


@pytest.mark.timeout(900)
def test_sigterm_under_slurm_names_the_checkpoint_it_saved(slurm, tmp_path, synthetic_pair):
    """`scancel --signal=TERM` signals every process of the step, W&B's service too: the training saves
    a checkpoint and stops as preempted, and the status names that checkpoint although W&B's teardown
    fails after it."""
    extra = {
        "overrides": ["trainer.max_epochs=400", "logger.wandb.mode=offline", "method.backbone.image_size=32"],
        "slurm": {"gpus_per_node": 0, "cpus_per_task": 1, "time": "15", "partition": "debug"},
    }
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[5], name="term", extra=extra)
    cfg, _ = sweep.load_sweep(path)
    directory, (run,) = sweep.sweep_dir(cfg), sweep.expand(cfg)
    run_dir = Path(run.run_dir)
    assert main(["sweep", "submit", str(path)]) == 0
    try:
        task = f"{sweep.submissions(directory)[-1]['job_id']}_0"
        wait_for(lambda: _training(run_dir), 600, "the task to train", interval=0.5)
        subprocess.run(["scancel", "--signal=TERM", task], check=True)
        status = wait_for(
            lambda: (s := json.loads((run_dir / "status.json").read_text()))["state"] != "running" and s,
            300,
            "the task to stop",
        )
        assert status["state"] == "preempted", (status, _logs(directory))
        saved = re.search(r"\(saved (\S+step-\d{9}\.ckpt)\)", status["error"])
        assert saved and Path(saved.group(1)).is_file() and status["error_file"] == saved.group(1), status
    finally:
        _scancel_submitted(directory)
