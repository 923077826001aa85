"""A run folder's state on disk: who owns it (``run.lock``) and how it stands (``status.json``).

``status.json`` is what sweeps read::

    {"state": "running" | "finished" | "failed" | "interrupted" | "preempted",
     "updated": ISO 8601, "host": ..., "pid": int, "slurm_job": "JOB" or "ARRAYJOB_TASK" or null,
     "slurm_restarts": int, "error": first useful line or null, "error_file": path involved or null}

``run.lock`` makes one process the only writer of a folder (under DDP: global rank 0; the other ranks
are the same job). It holds ``{"pid", "host", "slurm_job", "slurm_restarts", "started"}``, appears with
its whole content at once (hard link of a complete temp file, which fails when the lock exists, as
``O_CREAT|O_EXCL`` does) and is removed when its owner leaves, on every exit path Python sees. A lock
left by a process that was killed is *stale* and taken over: on this host its pid is gone; or its SLURM
job is no longer known to ``squeue``; or the lock is this very SLURM job's, left before a requeue
(same job, lower ``SLURM_RESTART_COUNT``). Any other lock refuses the second writer with
:class:`RunLockedError`, naming the holder.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.atomic_io import FILE_MODE, atomic_write_text
from datamodules.errors import RunFolderError, RunLockedError, WriteFailedError

STATUS_FILE = "status.json"
STATUS_BYTES = 4096  # status.json's size: room for the failure status when the disk is full
LOCK_FILE = "run.lock"
STATES = ("running", "finished", "failed", "interrupted", "preempted")
# squeue states of a job that will still run (or runs) and so still owns its lock
_SLURM_LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                      "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}  # fmt: skip


def global_rank() -> int:
    """This process's rank from the launcher's environment (before any Trainer exists): torchrun's or
    SLURM's global rank, else Lightning's ``NODE_RANK``/``LOCAL_RANK`` (zero only on node 0's first
    process; the number itself assumes ``LOCAL_WORLD_SIZE``, 1 when unset)."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    local, node, width = (os.environ.get(k, "") for k in ("LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"))
    node_rank = int(node) if node.isdigit() else 0
    return node_rank * (int(width) if width.isdigit() and int(width) > 0 else 1) + (
        int(local) if local.isdigit() else 0
    )


def _slurm_job_name() -> str | None:
    """``ARRAYJOB_TASK`` for array tasks (as squeue shows them), else the job id."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _slurm_restarts() -> int:
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- status --------------------------------------------------------------------------------------------
def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status, ``{"state": "pending"}`` when it has none (or an unreadable one)."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {"state": "pending"}
    return status if isinstance(status, dict) and "state" in status else {"state": "pending"}


def write_status(
    run_dir: Path, state: str, error: str | None = None, error_file: str | Path | None = None
) -> None:
    """Replace ``status.json`` atomically (global rank 0 only)."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; one of {STATES}")
    if global_rank() != 0:
        return
    status = {
        "state": state,
        "updated": _now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": _slurm_job_name(),
        "slurm_restarts": _slurm_restarts(),
        "error": error,
        "error_file": str(error_file) if error_file is not None else None,
    }
    path, text = Path(run_dir) / STATUS_FILE, _padded(json.dumps(status, indent=2))
    try:
        atomic_write_text(path, text)
    except WriteFailedError:
        if not _overwrite_in_place(path, text):  # a full disk: the status still says how the run ended
            raise


def _padded(text: str) -> str:
    """``text`` padded with spaces (JSON whitespace) to a multiple of :data:`STATUS_BYTES`: the file keeps
    room for any later status, which :func:`_overwrite_in_place` can use when the disk is full."""
    size = -(-(len(text) + 1) // STATUS_BYTES) * STATUS_BYTES
    return text + " " * (size - len(text) - 1) + "\n"


def _overwrite_in_place(path: Path, text: str) -> bool:
    """Write ``text`` over ``path``'s own bytes (no new block is needed, so it works on a full disk or at
    the quota, on filesystems that overwrite in place); False when it cannot. Not atomic: only used when
    the atomic write failed, for one small file."""
    data = text.encode()
    try:
        if path.stat().st_size < len(data):
            return False
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def state_after(error: BaseException) -> str:
    """The state a run stopped by ``error`` is in: ``preempted`` for Lightning's SIGTERMException (a
    SIGTERM that reached Lightning's own handler, e.g. in an evaluation: nothing is saved), ``interrupted``
    for Ctrl-C or an exit request, else ``failed``. (Stops that zsad saved and recorded as
    ``TrainingInterrupted`` never get here.)"""
    if type(error).__name__ == "SIGTERMException":
        return "preempted"
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return "interrupted"
    return "failed"


def error_line(error: BaseException) -> str:
    """The first useful line of an error, as status.json and sweep status show it."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Traceback" in text and lines:  # re-raised from a DataLoader worker: its last line says it
        return lines[-1][:500]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:500]


def error_file(error: BaseException) -> str | None:
    """The file an error is about: its own ``path`` or ``filename``, or that of an error it came from."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for attribute in ("path", "filename"):
            value = getattr(current, attribute, None)
            if isinstance(value, str | Path) and str(value):
                return str(value)
        current = current.__cause__ or current.__context__
    return None


def record_failure(run_dir: Path, error: BaseException) -> None:
    """Mark a run stopped by ``error`` (see :func:`state_after`) with its first line and file.

    Leaves the status alone when the error says the folder is not this process's to use (another owner,
    a finished run of another config), or while another live process holds the folder's lock. On a full
    disk the status is written over the old one in place (:data:`STATUS_BYTES`); when even that fails,
    stderr says so, and the error that ended the run is still the one raised (naming its file)."""
    if isinstance(error, RunFolderError):
        return
    holder = read_lock(run_dir)
    if holder and not _is_own_lock(holder) and not lock_is_stale(holder):
        return
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_status(run_dir, state_after(error), error_line(error), error_file(error))
    except (OSError, WriteFailedError) as status_error:  # the error that ended the run is the one raised
        print(f"zsad: could not record the run's state in {run_dir}: {status_error}", file=sys.stderr)


def is_finished(run_dir: Path) -> bool:
    """Finished with results: status ``finished`` and a ``results.json``."""
    return read_status(run_dir).get("state") == "finished" and (Path(run_dir) / "results.json").is_file()


# --- lock ----------------------------------------------------------------------------------------------
def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The lock's owner record, or None when the folder is not locked.

    A lock that exists but cannot be parsed (written by something else) comes back as ``{}``."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        lock = json.loads(text)
    except ValueError:
        return {}
    return lock if isinstance(lock, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _process_started_after(pid: int, moment: str) -> bool:
    """Whether process ``pid`` (of this host) started after ``moment``: the pid was reused. False when
    the start time cannot be read (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        # generous margin: btime is rounded and clocks get stepped; a reuse missed here only keeps a lock
        return started > datetime.datetime.fromisoformat(moment).timestamp() + 30.0
    except (OSError, ValueError, IndexError, StopIteration, TypeError):
        return False


def slurm_job_alive(job: str) -> bool | None:
    """Whether SLURM still knows job ``job`` (running, pending, requeued...); None when it cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return False if "Invalid job id" in proc.stderr else None
    return any(state.strip() in _SLURM_LIVE_STATES for state in proc.stdout.splitlines())


def lock_is_stale(lock: dict[str, Any]) -> bool:
    """Whether the owner of ``lock`` is gone, as far as this process can tell (see the module doc)."""
    pid, host, job = lock.get("pid"), lock.get("host"), lock.get("slurm_job")
    if not isinstance(pid, int) or not isinstance(host, str):
        return False  # not a zsad lock: never taken over silently
    if host == socket.gethostname():
        if not _pid_alive(pid) or _process_started_after(pid, str(lock.get("started"))):
            return True
        if pid == os.getpid() and job is None:
            return False  # this very process holds it
    if job:
        if job == _slurm_job_name() and int(lock.get("slurm_restarts") or 0) < _slurm_restarts():
            return True  # this job before its requeue: SLURM runs a job only once at a time
        return slurm_job_alive(str(job)) is False
    return False


def _is_own_lock(lock: dict[str, Any]) -> bool:
    """Held by this process, or by this process's job (DDP ranks other than 0 share rank 0's lock)."""
    if lock.get("host") == socket.gethostname() and lock.get("pid") == os.getpid():
        return True
    return lock.get("slurm_job") is not None and lock.get("slurm_job") == _slurm_job_name()


def describe_lock(lock: dict[str, Any]) -> str:
    if not lock:
        return "an unreadable lock"
    job = f", SLURM job {lock['slurm_job']}" if lock.get("slurm_job") else ""
    return f"pid {lock.get('pid')} on {lock.get('host')}{job}, since {lock.get('started')}"


def _create_lock(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` with ``record`` as a whole, only if it does not exist; False when it does."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)  # readable by whoever may want the folder next
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic, fails if it exists; the lock appears complete
        except FileExistsError:
            return False
        except OSError as error:  # a filesystem without hard links
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:
                lock_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(lock_fd, "w") as handle:
                handle.write(json.dumps(record) + "\n")
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def folder_guard(run_dir: Path) -> Iterator[None]:
    """Serialises stale-lock takeovers of one folder, or the submissions of one sweep, between processes
    (flock on the folder itself; without flock support, e.g. some network filesystems, unguarded)."""
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def acquire_run_lock(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Own ``run_dir`` for the duration of the block (global rank 0 only; other ranks get an empty record).

    Raises :class:`RunLockedError` naming the holder when another live process owns the folder."""
    if global_rank() != 0:
        yield {}
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job": _slurm_job_name(),
        "slurm_restarts": _slurm_restarts(),
        "started": _now(),
    }
    if not _create_lock(path, record):
        with folder_guard(run_dir):
            holder = read_lock(run_dir)
            if holder is not None and not lock_is_stale(holder):
                raise RunLockedError(
                    f"run folder {run_dir} is in use by {describe_lock(holder)}: wait for it to end or use "
                    f"another run_dir (if that process is really gone, delete {path})",
                    path=path,
                )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its owner is gone
            taken = _create_lock(path, record)
        if not taken:
            holder = read_lock(run_dir) or {}
            raise RunLockedError(
                f"run folder {run_dir} was just taken by {describe_lock(holder)}; use another run_dir",
                path=path,
            )
    remove_stray_temp_files(run_dir)
    try:
        yield record
    finally:
        release_run_lock(run_dir, record)


# A temp file of zsad's atomic writes (``.{name}.{8 random characters}.tmp``, datamodules.atomic_io).
_TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stray_temp_files(run_dir: Path) -> list[Path]:
    """Remove the temp files that writers killed mid-write (``kill -9``, a lost node) left in ``run_dir``:
    called by its new owner, so no live writer of the folder can own one (W&B's folder is W&B's, and a
    ``run.lock`` temp file may be a process's that is trying to take the lock right now)."""
    removed = []
    for folder, subfolders, files in os.walk(run_dir):
        if Path(folder) == Path(run_dir):
            subfolders[:] = [name for name in subfolders if name != "wandb"]
        for name in files:
            if _TEMP_FILE.fullmatch(name) and not name.startswith(f".{LOCK_FILE}."):  # a contender's
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed.append(Path(folder) / name)
    if removed:
        print(
            f"zsad: removed {len(removed)} temp file(s) of interrupted writes in {run_dir}", file=sys.stderr
        )
    return removed


def release_run_lock(run_dir: Path, record: dict[str, Any]) -> None:
    """Remove the lock if it is still ``record``'s (never one another process took over)."""
    if read_lock(run_dir) == record:
        with contextlib.suppress(FileNotFoundError):
            (Path(run_dir) / LOCK_FILE).unlink()
