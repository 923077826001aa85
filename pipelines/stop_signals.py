"""Stop signals (SIGINT, SIGTERM, SIGUSR1) at any moment of a job end it in a defined, resumable state.

One process-wide record holds the first stop signal of the job; :func:`stop_signal_guard` spans a whole
job (`zsad train / test / run`, a sweep task), from building the model through the run folder's lock to
the end. What a signal does depends on where it lands (docs/cluster.md, "Interruptions and exact resume"):

- **Inside a Trainer** nothing changes: the training stops at its next safe point after a checkpoint
  (:class:`pipelines.checkpointing.ExactResume`), an evaluation after the batch in progress (SIGUSR1:
  :class:`~pipelines.checkpointing.RequeueEvaluation`, SIGTERM: Lightning), Ctrl-C as Lightning does. The
  Trainer runs inside :func:`deferred` (``sigint=False``): SIGTERM / SIGUSR1 that arrive while no callback
  of the Trainer listens (its setup, the end of the last batch) are recorded, picked up by the Trainer's
  callbacks at their next check, or else stop the job as the Trainer returns. Processes the Trainer
  spawned (``ddp_spawn``) get them forwarded: their callbacks decide.
- **Between Trainers** (models built, data indexed, checkpoints read, loggers opened) a stop signal stops
  at once: the handler raises :class:`StopRequested`, a ``KeyboardInterrupt``, as Python's own Ctrl-C
  always did there. At once rather than at the next phase boundary because a phase (loading a ViT-L, a
  feature cache, indexing a large dataset) can outlast SLURM's warning (``--signal=USR1@90``), and a
  stop there costs nothing finished: everything zsad writes goes through :mod:`datamodules.atomic_io`
  (a unique temp file renamed over the real name; the temp file is removed on any exception), so an
  interrupted write leaves the old file or none, and what was finished (``last.ckpt``, results of
  earlier targets) is already on disk.
- The few steps that must not be cut (taking and releasing the lock, writing the final or failure
  status) run inside :func:`deferred`: a signal there is recorded and acts when the block ends.

The job then records ``interrupted`` (SIGINT) or ``preempted`` (SIGTERM, SIGUSR1), releases the lock, and
for a SIGUSR1 under SLURM requeues the job (global rank 0), as a stop during training does; the exit code
is 128 + signal. A second Ctrl-C raises ``KeyboardInterrupt`` at once, anywhere. A signal after the run
is recorded ``finished`` changes nothing (a second Ctrl-C still cuts the closing of the loggers short).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.errors import ZsadError

log = logging.getLogger(__name__)

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


class TrainingInterrupted(ZsadError):
    """A stop signal ended the job; what it finished is saved, and the same command resumes it."""

    def __init__(self, signal_name: str, checkpoint: Path | str | None) -> None:
        self.signal_name = signal_name
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.state = "interrupted" if signal_name == "SIGINT" else "preempted"
        self.exit_code = 128 + int(getattr(signal, signal_name))
        where = f"saved {self.checkpoint}" if self.checkpoint else "no new checkpoint"
        super().__init__(f"{self.state} by {signal_name} ({where}); run the same command again to resume")

    @classmethod
    def recognise(cls, error: BaseException) -> TrainingInterrupted | None:
        """``error`` as an interruption: this type (also re-raised as text from a ``ddp_spawn`` process),
        the guard's :class:`StopRequested`, an error while a stop signal was being handled (e.g. W&B's
        service, which SLURM's SIGTERM stops too, dropping the connection), Lightning's own SIGTERM exit,
        or Ctrl-C (Lightning turns it into ``SystemExit(1)``)."""
        if isinstance(error, cls):
            return error
        for earlier in _earlier_errors(error):  # raised while one was handled (W&B's service gone too)
            if isinstance(earlier, cls):
                return earlier
        if isinstance(error, StopRequested):
            return cls(error.signal_name, _record.saved)
        match = re.search(  # first: the checkpoint a ddp_spawn process saved, named in its text
            r"TrainingInterrupted: (?:interrupted|preempted) by (SIG\w+) \((?:saved (.+?)|no new checkpoint)\)",
            str(error),
        )
        if match:
            return cls(match.group(1), match.group(2))
        received = received_signal()
        if received and not isinstance(error, ZsadError):
            return cls(received, _record.saved)
        if type(error).__name__ == "SIGTERMException":
            return cls("SIGTERM", None)
        if isinstance(error, KeyboardInterrupt) or (
            isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt)
        ):
            return cls("SIGINT", None)
        return None


def _earlier_errors(error: BaseException) -> list[BaseException]:
    """The errors ``error`` was raised while handling, or from (``__context__``, ``__cause__``), newest first."""
    found: list[BaseException] = []
    current = error.__cause__ or error.__context__
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


class StopRequested(KeyboardInterrupt):
    """Raised by the guard's handler where a stop signal stops the job at once (between Trainers).

    A ``KeyboardInterrupt``, so that whatever copes with Ctrl-C (every ``except Exception`` lets it
    through, Lightning shuts down gracefully) copes with SIGTERM and SIGUSR1 alike."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")


def requeue_slurm_job() -> None:
    """``scontrol requeue`` of this job (array task), as Lightning's auto-requeue did; nothing outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("zsad: could not requeue SLURM job %s: %s", job, error)
        return
    if result.returncode != 0:
        log.warning("zsad: scontrol requeue %s failed: %s", job, (result.stderr or result.stdout).strip())
    else:
        log.info("zsad: requeued SLURM job %s", job)


# --- the process-wide record ---------------------------------------------------------------------------
@dataclasses.dataclass
class _Record:
    signum: int = 0  # the first stop signal of this job (or of a Trainer outside any job), 0 when none
    acted: bool = False  # an interruption is under way for it (raised by the guard or a Trainer)
    by_guard: bool = False  # ...raised by the guard: its SLURM requeue is the guard's to do
    guarded: bool = False  # a job's guard is installed
    deferring: int = 0  # nesting depth of deferred() blocks that hold SIGINT too
    deferring_stops: int = 0  # ...that hold SIGTERM and SIGUSR1 (every deferred() block)
    forwarding: int = 0  # ...around a Trainer whose processes this one spawned (ddp_spawn)
    saved: str | None = None  # the checkpoint the stop saved (what the status and the message name)


_record = _Record()


def received_signal() -> str | None:
    """The name of the stop signal this job (or this Trainer) received, None when none."""
    return signal.Signals(_record.signum).name if _record.signum else None


def received_signum() -> int:
    """The number of that signal, 0 when none."""
    return _record.signum


def new_trainer() -> None:
    """A Trainer starts: outside a job's guard (``zsad predict``, a ``ddp_spawn`` process) it has a
    record of its own; inside one, a signal received before it carries into it."""
    if not _record.guarded:
        _record.signum, _record.acted, _record.by_guard, _record.saved = 0, False, False, None


def note_saved(checkpoint: Path | str) -> None:
    """The checkpoint a stop saved: the interruption names it whatever error ends the job afterwards."""
    _record.saved = str(checkpoint)


def note_signal(signum: int) -> bool:
    """Record ``signum``; True when it is the job's first stop signal. A second Ctrl-C stops at once."""
    if signum == signal.SIGINT and _record.signum == signal.SIGINT:
        raise KeyboardInterrupt
    if _record.signum:
        return False  # already stopping: the first signal decides the state
    _record.signum = signum
    return True


def _stop_now(signum: int) -> None:
    _record.acted = _record.by_guard = True
    raise StopRequested(signum)


def _on_signal(signum: int, frame: Any) -> None:
    """The guard's handler (between Trainers, and under a Trainer where no callback of its own listens)."""
    if not note_signal(signum):
        return
    if _record.deferring or (_record.deferring_stops and signum != signal.SIGINT):
        if signum == signal.SIGINT:
            print("zsad: Ctrl-C: stopping after this step (Ctrl-C again to stop at once)")
        elif _record.forwarding:  # the Trainer's processes decide: they save and stop at a safe point
            for child in multiprocessing.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)
        return
    _stop_now(signum)


@contextlib.contextmanager
def deferred(sigint: bool = True, stop_after: bool = True, forward: bool = False) -> Iterator[None]:
    """Within the block a stop signal (SIGINT too with ``sigint``) is only recorded (SIGTERM and SIGUSR1
    also forwarded to this process's multiprocessing children with ``forward``). When the block ends
    normally outside any other deferred block, a recorded signal nothing acted on stops the job there
    (``stop_after``); otherwise the job ends as it would have (a failure, or the run finished)."""
    _record.deferring += int(sigint)
    _record.deferring_stops += 1
    _record.forwarding += int(forward)
    try:
        yield
    except BaseException:
        if _record.signum:
            _record.acted = True  # the error in flight ends the job (a Trainer's interruption, a crash)
        raise
    finally:
        _record.deferring -= int(sigint)
        _record.deferring_stops -= 1
        _record.forwarding -= int(forward)
    outermost = not (_record.deferring or _record.deferring_stops)
    if stop_after and outermost and _record.guarded and _record.signum and not _record.acted:
        _stop_now(_record.signum)


def under_trainer(trainer: Any) -> contextlib.AbstractContextManager[None]:
    """Around ``trainer.fit`` / ``trainer.test``: the Trainer's callbacks decide when SIGTERM and SIGUSR1
    stop it (Ctrl-C stays a ``KeyboardInterrupt``, as Lightning expects); when its processes are spawned
    (``ddp_spawn``) they get the signal too, since the callbacks listen in them, not here."""
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    return deferred(sigint=False, forward=isinstance(trainer.strategy.launcher, _MultiProcessingLauncher))


def close_loggers_after_stop(loggers: list[Any], interruption: TrainingInterrupted) -> None:
    """W&B's run of a job the guard stopped, closed with its state before a requeue's SIGTERM also stops
    W&B's service (global rank 0; a Trainer's stop closes its loggers itself)."""
    from pipelines.loggers import close_interrupted
    from pipelines.run_state import global_rank

    if _record.by_guard and global_rank() == 0:
        close_interrupted(loggers, interruption.state, interruption.exit_code)


@contextlib.contextmanager
def stop_signal_guard() -> Iterator[None]:
    """Installs the stop-signal handlers for one job (main thread only; a guard inside a guard is the
    outer one) and turns a :class:`StopRequested` that reached it into :class:`TrainingInterrupted`,
    requeueing a SLURM job on SIGUSR1 once the job has released its run folder."""
    if _record.guarded or threading.current_thread() is not threading.main_thread():
        yield
        return
    from pipelines.run_state import global_rank

    _record.signum, _record.acted, _record.by_guard, _record.saved = 0, False, False, None
    _record.deferring = _record.deferring_stops = _record.forwarding = 0
    _record.guarded = True
    previous: dict[int, Any] = {}
    try:
        for name in STOP_SIGNALS:
            signum = int(getattr(signal, name))
            previous[signum] = signal.signal(signum, _on_signal)
        yield
    except BaseException as error:
        interruption = TrainingInterrupted.recognise(error) if _record.by_guard else None
        if interruption is not None and interruption.signal_name == "SIGUSR1" and global_rank() == 0:
            requeue_slurm_job()  # a Trainer's stop requeued already (before raising)
        if interruption is not None and interruption is not error:
            raise interruption from None
        raise
    finally:
        _record.guarded = False
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
