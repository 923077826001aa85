"""Run-folder state: status.json's contract, the run lock (refusal, release, stale-lock takeover)."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.errors import FinishedRunError, RunLockedError, WriteFailedError
from pipelines import run_state
from pipelines.run_state import (
    LOCK_FILE,
    acquire_run_lock,
    lock_is_stale,
    read_lock,
    read_status,
    record_failure,
    write_status,
)

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    for key in (*SLURM_VARS, *RANK_VARS):
        monkeypatch.delenv(key, raising=False)


def _lock(**fields) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": None, "started": now, **fields}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_process():
    """A process of this host that stays alive until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def test_status_has_the_documented_fields(tmp_path, monkeypatch):
    assert read_status(tmp_path) == {"state": "pending"}
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    write_status(tmp_path, "failed", "OSError: boom", tmp_path / "results.json")
    status = json.loads((tmp_path / "status.json").read_text())
    assert set(status) == {
        "state",
        "updated",
        "host",
        "pid",
        "slurm_job",
        "slurm_restarts",
        "error",
        "error_file",
    }
    assert (
        status["state"] == "failed"
        and status["pid"] == os.getpid()
        and status["host"] == socket.gethostname()
    )
    assert status["slurm_job"] == "77_3" and status["slurm_restarts"] == 2
    assert status["error"] == "OSError: boom" and status["error_file"] == str(tmp_path / "results.json")
    datetime.datetime.fromisoformat(status["updated"])
    with pytest.raises(ValueError, match="unknown run state"):
        write_status(tmp_path, "done")
    (tmp_path / "status.json").write_text('{"state": "runn')  # torn by something else: reads as pending
    assert read_status(tmp_path) == {"state": "pending"}


def test_global_rank_from_the_launchers_environment(monkeypatch):
    assert run_state.global_rank() == 0
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's multi-node launch: node 1's first process
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert run_state.global_rank() != 0
    monkeypatch.setenv("SLURM_PROCID", "0")  # SLURM's (or torchrun's RANK) global rank wins
    assert run_state.global_rank() == 0


def test_only_global_rank_zero_writes_status_and_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    write_status(tmp_path, "running")
    assert not (tmp_path / "status.json").exists()
    with acquire_run_lock(tmp_path) as record:
        assert record == {} and read_lock(tmp_path) is None


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (KeyboardInterrupt(), "interrupted"),
        (SystemExit(1), "interrupted"),
        (type("SIGTERMException", (Exception,), {})(), "preempted"),
        (RuntimeError("first line\nsecond"), "failed"),
    ],
)
def test_record_failure_states(tmp_path, error, state):
    record_failure(tmp_path, error)
    status = read_status(tmp_path)
    assert status["state"] == state
    if state == "failed":
        assert status["error"] == "RuntimeError: first line"


def test_record_failure_names_the_file_and_leaves_others_folders_alone(tmp_path, live_process):
    record_failure(tmp_path, WriteFailedError("cannot write results.json", path=tmp_path / "results.json"))
    assert read_status(tmp_path)["error_file"] == str(tmp_path / "results.json")
    cause = FileNotFoundError(2, "No such file", "/data/x.png")
    try:
        raise RuntimeError("decoding failed") from cause
    except RuntimeError as error:
        record_failure(tmp_path, error)
    assert read_status(tmp_path)["error_file"] == "/data/x.png"

    write_status(tmp_path, "finished")
    for refused in (RunLockedError("in use"), FinishedRunError("other config")):
        record_failure(tmp_path, refused)
        assert read_status(tmp_path)["state"] == "finished"
    (tmp_path / LOCK_FILE).write_text(json.dumps(_lock(pid=live_process.pid)))
    record_failure(tmp_path, RuntimeError("not this run's failure"))  # another live process owns it
    assert read_status(tmp_path)["state"] == "finished"


def test_lock_is_created_and_released_on_every_exit_path(tmp_path):
    with acquire_run_lock(tmp_path) as record:
        lock = read_lock(tmp_path)
        assert lock == record
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        assert lock["slurm_job"] is None and {"started"} <= set(lock)
    assert read_lock(tmp_path) is None
    for error in (RuntimeError("x"), KeyboardInterrupt(), SystemExit(3)):
        with pytest.raises(type(error)), acquire_run_lock(tmp_path):
            raise error
        assert not (tmp_path / LOCK_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp files either


def test_second_writer_is_refused_naming_the_holder(tmp_path, live_process, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the refused process's own job is another one
    (tmp_path / LOCK_FILE).write_text(json.dumps(_lock(pid=live_process.pid, slurm_job="991")))
    monkeypatch.setattr(run_state, "slurm_job_alive", lambda job: True)
    with pytest.raises(RunLockedError) as refused, acquire_run_lock(tmp_path):
        pytest.fail("must not enter")
    message = str(refused.value)
    assert str(live_process.pid) in message and socket.gethostname() in message and "991" in message
    assert "run_dir" in message
    assert read_lock(tmp_path)["pid"] == live_process.pid  # the holder's lock is untouched

    with acquire_run_lock(tmp_path / "own"), pytest.raises(RunLockedError):  # this process, twice
        acquire_run_lock(tmp_path / "own").__enter__()


def test_stale_locks_are_taken_over(tmp_path, monkeypatch):
    assert lock_is_stale(_lock(pid=_dead_pid()))
    assert not lock_is_stale(_lock())  # this live process
    assert not lock_is_stale(_lock(host="elsewhere"))  # cannot tell: kept
    assert not lock_is_stale({})  # not a zsad lock
    old = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc).isoformat()
    assert lock_is_stale(_lock(pid=1 if os.getpid() != 1 else os.getppid(), started=old))  # pid reused since

    alive = {"991": True, "992": False}
    monkeypatch.setattr(run_state, "slurm_job_alive", lambda job: alive.get(job))
    assert not lock_is_stale(_lock(host="node7", slurm_job="991"))
    assert lock_is_stale(_lock(host="node7", slurm_job="992"))  # squeue no longer knows it
    assert not lock_is_stale(_lock(host="node7", slurm_job="993"))  # squeue cannot be asked
    # a requeue of the same job (higher SLURM_RESTART_COUNT) takes over its own lock ...
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert lock_is_stale(_lock(host="node7", slurm_job="991", slurm_restarts=0))
    assert not lock_is_stale(_lock(host="node7", slurm_job="991", slurm_restarts=1))  # ... not a sibling's

    (tmp_path / LOCK_FILE).write_text(json.dumps(_lock(host="node7", slurm_job="991", slurm_restarts=0)))
    with acquire_run_lock(tmp_path) as record:
        assert read_lock(tmp_path) == record and record["slurm_restarts"] == 1
    assert read_lock(tmp_path) is None


def test_a_lock_taken_over_meanwhile_is_not_removed_by_its_old_owner(tmp_path):
    with acquire_run_lock(tmp_path):
        other = _lock(pid=12345678, host="node9")
        (tmp_path / LOCK_FILE).write_text(json.dumps(other))
    assert read_lock(tmp_path) == other


def _contend(run_dir: str, barrier, results) -> None:
    barrier.wait(timeout=120)
    try:
        with acquire_run_lock(Path(run_dir)):
            results.put("owner")
            barrier.wait(timeout=120)  # hold it until every process has tried
    except RunLockedError:
        results.put("refused")
        barrier.wait(timeout=120)


def test_exactly_one_of_many_concurrent_processes_gets_the_lock(tmp_path):
    context = multiprocessing.get_context("fork")
    n = 6
    barrier, results = context.Barrier(n), context.Queue()
    processes = [context.Process(target=_contend, args=(str(tmp_path), barrier, results)) for _ in range(n)]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=120) for _ in range(n))
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert outcomes == ["owner"] + ["refused"] * (n - 1)
    assert read_lock(tmp_path) is None and list(tmp_path.iterdir()) == []
