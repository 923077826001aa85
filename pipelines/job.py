"""One job's frame: the run folder it owns, its config and status files, stop signals and loggers.

:func:`run_job` builds it once for ``zsad train``, ``test`` and ``run`` (pipelines/runner.py) and hands the
:class:`Job` to what runs inside: fit and evaluate, the Trainers they build (``default_root_dir`` is
``RUN/.lightning``), and the module (``ZeroShotModule.run_dir``, for files a method keeps with its run).
In order:

1. the run folder (:mod:`pipelines.run_folder`: one folder every process of a DDP job agrees on);
2. its lock (:mod:`pipelines.run_state`, ``run.lock``): one owner at a time;
3. a finished run of the same config is reported instead of redone; a finished or resumable run of another
   config is refused, naming the keys that differ;
4. ``config.yaml``, ``status.json`` = running, the loggers (W&B keeps one run id per folder);
5. the body (training, evaluation);
6. ``status.json`` = finished, or how the job ended: failed (with the error), interrupted or preempted by a
   stop signal (:mod:`pipelines.stop_signals`; the same command resumes it). The lock is released whatever
   ends the job. A job refused the folder (locked, another config) leaves both alone.

The writes of steps 2, 4 and 6 are done with stop signals deferred, so a signal never leaves a half-taken
lock or a half-written status. The job runs inside the caller's ``stop_signal_guard``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.loggers import Logger

from pipelines import stop_signals
from pipelines.config import ExperimentConfig
from pipelines.loggers import make_loggers, wandb_hint
from pipelines.run_folder import (
    RunOutcome,
    finished_run,
    prepare_run_dir,
    refuse_resume_of_another_config,
    wandb_run_id,
    write_config,
)
from pipelines.run_state import acquire_run_lock, record_failure, write_status
from pipelines.stop_signals import TrainingInterrupted, deferred

#: zsad's Trainers work in ``RUN/.lightning`` (their ``default_root_dir``), a folder that never holds
#: checkpoints, so Lightning cannot find a SLURM requeue checkpoint there (see pipelines/runner.py).
LIGHTNING_DIR = ".lightning"


@dataclasses.dataclass
class Job:
    """What a job runs in: its config, kind ("train", "eval" or "run"), run folder and loggers."""

    cfg: ExperimentConfig
    kind: str
    run_dir: Path
    loggers: list[Logger]


def run_job(cfg: ExperimentConfig, kind: str, body: Callable[[Job], RunOutcome]) -> RunOutcome:
    """``body(job)`` inside the job's frame (the module docstring); a finished run is returned unrun."""
    run_dir = prepare_run_dir(cfg)
    with contextlib.ExitStack() as owned:
        with deferred():  # a signal cannot come between taking the lock and owning its release
            owned.enter_context(acquire_run_lock(run_dir))
        finished = finished_run(cfg, run_dir, kind)
        if finished is not None:
            return finished
        refuse_resume_of_another_config(cfg, run_dir)
        loggers: list[Logger] = []
        try:
            write_config(cfg, run_dir)
            write_status(run_dir, "running")
            loggers = make_loggers(cfg, run_dir, job_type=kind, run_id=wandb_run_id(run_dir))
            outcome = body(Job(cfg, kind, run_dir, loggers))
            with deferred(stop_after=False):  # from here on a signal changes nothing: the run finished
                write_status(run_dir, "finished")
        except BaseException as error:
            with deferred(stop_after=False):  # the status is written whole, whatever comes meanwhile
                interruption = TrainingInterrupted.recognise(error)  # saved: the same command resumes it
                if interruption is None:
                    record_failure(run_dir, error)
                    raise
                stop_signals.close_loggers_after_stop(loggers, interruption)
                write_status(run_dir, interruption.state, str(interruption), interruption.checkpoint)
            raise interruption from None
        with deferred(stop_after=False):  # finished: a signal changes nothing (a second Ctrl-C stops)
            outcome.notes = _close_loggers(loggers)
    return outcome


def _close_loggers(loggers: list[Logger]) -> list[str]:
    """Finalise the loggers of a finished job; returns the notes to print (where W&B wrote the run)."""
    hint = wandb_hint(loggers)
    for logger in loggers:
        logger.finalize("success")
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()  # W&B: close the run so the next one in this process starts clean
    return [hint] if hint else []
