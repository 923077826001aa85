"""Sweeps through a real SLURM (sbatch array + srun), including SIGUSR1 requeue and resume.

`.ci/run` starts a single-node SLURM on loopback (`.ci/start_slurm.sh`); there these tests must run and
fail loudly if SLURM is not up. Elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sweep_helpers import write_sweep

from pipelines import sweep
from pipelines.cli import main

pytestmark = pytest.mark.slow


def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM client tools (sbatch, sinfo) are not installed"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"sinfo failed: {error}"
    if not any(state in states for state in ("idle", "mixed", "alloc")):
        return (
            f"no SLURM node is up (sinfo: {states.strip() or 'nothing'}); start one with .ci/start_slurm.sh"
        )
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _slurm_problem()
    if problem:
        if os.environ.get("CI") == "true" or os.environ.get("ZSAD_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM is required here but unavailable: {problem}")
        pytest.skip(problem)


def _wait(condition, timeout: float, what: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job_gone(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout
    return not out.strip()


def _requeued_and_pending(task: str) -> bool:
    out = subprocess.run(["scontrol", "show", "job", task], capture_output=True, text=True).stdout
    return "JobState=PENDING" in out and "Restarts=0" not in out


def _logs(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((directory / "slurm-logs").glob("*.out")))


def test_array_sweep_runs_through_sbatch_and_srun(slurm, tmp_path, synthetic_pair, capsys):
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1, 2], epochs=1)
    assert main(["sweep", "submit", str(path)]) == 0
    cfg, _ = sweep.load_sweep(path)
    directory = sweep.sweep_dir(cfg)
    job_id = sweep.submissions(directory)[-1]["job_id"]
    assert "#SBATCH --array=0-1%2" in Path(sweep.submissions(directory)[-1]["script"]).read_text()
    _wait(lambda: _job_gone(job_id), 600, f"SLURM job {job_id} to finish")

    rows = sweep.status(cfg)
    assert [r["state"] for r in rows] == ["finished", "finished"], (rows, _logs(directory))
    for row in rows:
        status = json.loads((Path(row["run_dir"]) / "status.json").read_text())
        assert status["slurm_job"] == f"{job_id}_{row['index']}"
        assert (Path(row["run_dir"]) / "results.json").is_file()
    capsys.readouterr()
    assert main(["sweep", "status", str(path)]) == 0
    assert "2 finished" in capsys.readouterr().out
    assert main(["sweep", "submit", str(path)]) == 0  # nothing left: no new job
    assert "nothing to submit" in capsys.readouterr().out
    assert main(["report", str(path), "--wandb-mode", "disabled"]) == 0
    assert "| synthetic |" in (directory / "report.md").read_text()


def test_sigusr1_requeues_and_the_run_resumes_from_its_checkpoint(slurm, tmp_path, synthetic_pair):
    # Training must still run when the signal comes, however fast the machine: no feature cache (cached
    # epochs take milliseconds) and many epochs; the signal is sent as soon as Lightning has installed
    # its requeue handler, i.e. right at the start of fit.
    extra = {"overrides": ["trainer.max_epochs=60", "logger.wandb.mode=disabled", "method.backbone.image_size=32",
                           "method.cache_features=false", "source.batch_size=1"]}  # fmt: skip
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[5], name="requeue", extra=extra)
    assert main(["sweep", "submit", str(path)]) == 0
    cfg, _ = sweep.load_sweep(path)
    directory = sweep.sweep_dir(cfg)
    job_id = sweep.submissions(directory)[-1]["job_id"]
    run_dir = Path(sweep.expand(cfg)[0].run_dir)

    _wait(lambda: "SLURM auto-requeueing enabled" in _logs(directory), 300, "training to start", interval=0.2)
    time.sleep(2)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)  # what SLURM sends before the time limit
    _wait(lambda: list(run_dir.glob("hpc_ckpt_*.ckpt")), 120, "Lightning's requeue checkpoint")
    # SLURM holds a requeued job for about two minutes before it may start again (EligibleTime); what is
    # tested is that it resumes, not that wait, so the hold is lifted once the job is back in the queue.
    task = f"{job_id}_0"
    _wait(lambda: _requeued_and_pending(task), 120, "the job to be requeued", interval=0.5)
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True)
    _wait(lambda: json.loads((run_dir / "status.json").read_text()).get("state") == "finished", 600,
          "the requeued run to finish", interval=5)  # fmt: skip

    status = json.loads((run_dir / "status.json").read_text())
    assert status["slurm_job"] == f"{job_id}_0" and status["slurm_restarts"] >= 1
    log = _logs(directory)
    assert "Requeued SLURM job" in log
    assert "Restoring states from the checkpoint path at" in log and "hpc_ckpt_1.ckpt" in log
    assert (
        json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]["mean"]["image_auroc"]
        is not None
    )
