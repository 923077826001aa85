"""`zsad` into an existing run folder: finished runs are kept, a second writer is refused, a full disk or
Ctrl-C ends with a truthful status, no lock and no temp file (training-free CLIP on synthetic data: fast)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from baselines_support import FAST, write_method_experiment

from pipelines import runner
from pipelines.cli import _report, main
from pipelines.run_state import LOCK_FILE, read_lock, read_status
from tests_support import mounted_tmpfs


@pytest.fixture
def experiments(tmp_path, synthetic_pair):
    _, target = synthetic_pair
    return {
        method: write_method_experiment(tmp_path, method, None, target)
        for method in ("clip_tiny", "clip_ac_tiny")
    }


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.name.endswith(".tmp") or p.name == LOCK_FILE
    )


def test_a_finished_run_is_skipped_for_its_config_and_refused_for_another(tmp_path, experiments, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(experiments["clip_tiny"]), *FAST, f"run_dir={run_dir}"]) == 0
    files = {
        name: (run_dir / name).read_bytes()
        for name in ("config.yaml", "results.json", "results.csv", "status.json")
    }
    capsys.readouterr()

    # the same config again: nothing runs, the existing results are shown as such
    assert (
        main(
            [
                "run",
                str(experiments["clip_tiny"]),
                *FAST,
                f"run_dir={run_dir}",
                "trainer.enable_progress_bar=true",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(f"skipped: {run_dir} already holds a finished run of this config")
    assert "existing results of that run (written " in out and "ring" in out
    assert {name: (run_dir / name).read_bytes() for name in files} == files

    # another method into the finished folder: one clear line, nothing of the finished run changed
    assert main(["test", str(experiments["clip_ac_tiny"]), *FAST, f"run_dir={run_dir}"]) == 2
    captured = capsys.readouterr()
    assert "img AUROC" not in captured.out
    err = captured.err.strip()
    assert err.startswith(f"zsad: error: run folder {run_dir} holds a finished run of a different config")
    assert "method.name" in err and "name" in err and "use another run_dir" in err and "\n" not in err
    assert {name: (run_dir / name).read_bytes() for name in files} == files
    assert _leftovers(run_dir) == []


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, experiments, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pipelines.run_state import acquire_run_lock\n"
         f"with acquire_run_lock({str(run_dir)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(runner.__file__).parents[1],
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["test", str(experiments["clip_tiny"]), *FAST, f"run_dir={run_dir}"]) == 2
        err = capsys.readouterr().err
        assert f"run folder {run_dir} is in use by pid {holder.pid} on " in err
        assert sorted(p.name for p in run_dir.iterdir()) == [
            LOCK_FILE
        ]  # no config, status or results written
        assert read_lock(run_dir)["pid"] == holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert read_lock(run_dir) is None  # released when its owner ended


def test_temp_files_of_writers_killed_mid_write_are_removed_by_the_next_owner(tmp_path, experiments, capsys):
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "resume" / "step-000000004.ckpt"
    checkpoint.parent.mkdir(parents=True)
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from datamodules.atomic_io import atomic_write\n"
         "def write(handle):\n    handle.write(b'half a checkpoint'); print('writing', flush=True); sys.stdin.read()\n"
         f"atomic_write(Path({str(checkpoint)!r}), write)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(runner.__file__).parents[1],
    )  # fmt: skip
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()  # SIGKILL mid-write: nothing of Python runs, its temp file stays
    writer.wait(timeout=60)
    (stray,) = checkpoint.parent.glob(".step-000000004.ckpt.*.tmp")
    (run_dir / "notes.tmp").write_text("not zsad's: kept")
    assert main(["test", str(experiments["clip_tiny"]), *FAST, f"run_dir={run_dir}"]) == 0
    assert not stray.exists() and not checkpoint.exists() and (run_dir / "notes.tmp").is_file()
    assert f"removed 1 temp file(s) of interrupted writes in {run_dir}" in capsys.readouterr().err
    assert [p for p in _leftovers(run_dir) if p != "notes.tmp"] == []


def _fail_fsync_of(name: str, monkeypatch) -> None:
    """ENOSPC when a temp file of ``name`` is made durable, as a full disk reports it."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell files apart")
def test_a_full_disk_while_writing_results_fails_the_run_cleanly(tmp_path, experiments, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    _fail_fsync_of("results.json", monkeypatch)
    assert main(["run", str(experiments["clip_tiny"]), *FAST, f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"zsad: error: cannot write results.json in {run_dir}: No space left on device (ENOSPC); "
    )
    assert err.endswith("free there") and "\n" not in err
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["error_file"] == str(run_dir / "results.json")
    assert status["error"].startswith("WriteFailedError: cannot write results.json")
    assert not (run_dir / "results.json").exists() and _leftovers(run_dir) == []


def test_a_full_disk_in_any_other_writer_is_one_line_and_a_failed_status(
    tmp_path, experiments, capsys, monkeypatch
):
    run_dir = tmp_path / "run"

    def full(*args, **kwargs):  # e.g. the CSV logger or a checkpoint writer
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "logs" / "metrics.csv"))

    monkeypatch.setattr(runner, "evaluate", full)
    assert main(["run", str(experiments["clip_tiny"]), *FAST, f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"zsad: error: cannot write metrics.csv in {run_dir / 'logs'}: No space left on device"
    )
    assert "\n" not in err
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["error_file"] == str(run_dir / "logs" / "metrics.csv")
    assert _leftovers(run_dir) == []


@pytest.fixture
def tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "tmpfs", "2m") as mount:
        yield mount


def _fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its filesystem has no byte left."""
    with open(folder / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)


def test_a_disk_that_fills_during_evaluation_records_the_failure_naming_the_file(
    tmpfs, experiments, capsys, monkeypatch
):
    run_dir = tmpfs / "run"
    evaluate = runner.evaluate

    def disk_fills_first(*args, **kwargs):
        _fill(tmpfs)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", disk_fills_first)
    assert main(["run", str(experiments["clip_tiny"]), *FAST, f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err.startswith("zsad: error: cannot write ")
        and "No space left on device (ENOSPC); 0 B free there" in err
    )
    failed = err.removeprefix("zsad: error: cannot write ").split(" in ", 1)[0]
    assert failed != "status.json"
    status = read_status(run_dir)  # written in place: a new file cannot be made on this disk
    assert status["state"] == "failed" and Path(status["error_file"]).name == failed, status
    assert status["error"] == f"WriteFailedError: {err.removeprefix('zsad: error: ')}"[:500]
    assert _leftovers(run_dir) == [] and not (run_dir / "results.json").exists()


def test_ctrl_c_records_interrupted_and_releases_the_folder(tmp_path, experiments, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "evaluate", interrupted)
    run_dir = tmp_path / "run"
    assert main(["run", str(experiments["clip_tiny"]), *FAST, f"run_dir={run_dir}"]) == 130
    assert read_status(run_dir)["state"] == "interrupted"
    assert _leftovers(run_dir) == []


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_zsad_test_refuses_a_checkpoint_that_would_run_code(tmp_path, synthetic_pair, capsys):
    source, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "vand_tiny", source, target)
    marker, crafted = tmp_path / "ran", tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "zsad": _RunsCode(marker)}, crafted)
    assert main(["test", str(experiment), *FAST, f"checkpoint={crafted}", f"run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"zsad: error: refused to load {crafted}: it needs code or types") and "\n" not in err
    )
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_only_global_rank_zero_prints_results(tmp_path, monkeypatch, capsys):
    outcome = runner.RunOutcome(tmp_path, results={"targets": {}}, notes=["a note"])
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP process Lightning started
    _report(outcome)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    _report(outcome)
    assert f"run directory: {tmp_path}" in capsys.readouterr().out


def test_a_run_name_is_a_folder_name(tmp_path, experiments, capsys):
    for name in ("../../x", "a/b", "..", ""):
        assert main(["run", str(experiments["clip_tiny"]), *FAST, f"name={name}"]) == 2
        assert "must be a plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()  # refused before any folder
