"""Checkpoints that let an interrupted training resume exactly (docs/cluster.md, "Interruptions and exact resume").

The promise: a run interrupted at any point and resumed ends with bit-identical trainable parameters (hence
results) to the same run uninterrupted. How:

- **Randomness is a function of the position**, never of history: the training order is the
  (seed, epoch) permutation of :mod:`datamodules.resumable` (which also resumes mid-epoch), and
  :class:`ExactResume` re-seeds Python, NumPy and torch (CPU and CUDA) at every epoch start and before every
  training step from (seed, epoch, batch, rank). A resumed run therefore needs no RNG state at all: the
  model, optimizer and loop state of the checkpoint plus the position determine everything after it
  (VAND's mosaic, dropout, worker seeds).
- **Bounded loss**: a checkpoint at the end of every epoch and, within an epoch, after the first step that
  ends ``trainer.checkpoint_minutes`` after the previous one. SIGINT (Ctrl-C), SIGTERM and SIGUSR1 (SLURM's
  warning before the time limit) only set a flag; after the step in progress every process saves and stops
  (:class:`TrainingInterrupted`: status ``interrupted`` for Ctrl-C, ``preempted`` otherwise; exit code
  128 + signal). SIGUSR1 under SLURM also requeues the job. A second Ctrl-C stops at once.
- **Atomic files**: written to a unique temporary name, fsynced, renamed (:class:`AtomicCheckpointIO`), so a
  kill during a write leaves the previous files intact. The two newest resume checkpoints are kept in
  ``checkpoints/resume/``; ``checkpoints/last.ckpt`` is written when training ends and marks it complete.
- **Safe, checked loading**: every checkpoint is read with ``torch.load(weights_only=True)`` and zsad's
  allow-list (:mod:`lightning_modules.checkpoint_io`), Lightning's resume included; a file that cannot be
  read or lacks the training state is skipped with a warning naming it (:func:`find_resume_checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from datamodules.atomic_io import atomic_torch_save
from datamodules.errors import DataChangedError, ZsadError
from datamodules.fingerprint import changes, describe_changes
from datamodules.resumable import derived_seed
from lightning_modules.checkpoint_io import CheckpointError, read_checkpoint, safe_torch_load
from pipelines import stop_signals
from pipelines.config import config_dir
from pipelines.loggers import close_interrupted
from pipelines.stop_signals import STOP_SIGNALS, TrainingInterrupted

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
RESUME_DIR = "resume"  # below CHECKPOINT_DIR
LAST_CHECKPOINT = "last.ckpt"
RESUME_KEY = "zsad_resume"  # what ExactResume adds to every checkpoint it writes
RESUME_FORMAT = 1
KEEP_RESUME_CHECKPOINTS = 2  # the newest may be cut short by a hard kill at the worst moment


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def resume_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / RESUME_DIR


# --- atomic, safe checkpoint files -------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files, written atomically and read with zsad's allow-list only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        return safe_torch_load(path, map_location=map_location or "cpu")


# --- a checkpoint to evaluate (`checkpoint=`) ---------------------------------------------------------
def _command_for(path: Path, method: str) -> str:
    """The command that evaluates ``path``: with the experiment of the run folder it lies in (its
    ``config.yaml``), else with any experiment of its method."""
    config = path.parent.parent / "config.yaml"  # RUN/checkpoints/last.ckpt
    try:
        experiment = yaml.safe_load(config.read_text()).get("name") if config.is_file() else None
    except (OSError, yaml.YAMLError, AttributeError):
        experiment = None
    if experiment and (config_dir() / "experiment" / f"{experiment}.yaml").is_file():
        return f"zsad test {experiment} checkpoint={path}"
    return f"zsad test EXPERIMENT method={method} checkpoint={path}"


def read_trained_checkpoint(path: Path, method: str) -> Any:
    """The content of a checkpoint given to evaluate ``method`` (``checkpoint=``), refused before any model
    is built or input read when it is missing, damaged, not a checkpoint, unsafe, or another method's
    (the message names that method and the command that would evaluate it)."""
    checkpoint = read_checkpoint(path)
    identity = checkpoint.get("zsad") if isinstance(checkpoint, dict) else None
    saved = identity.get("method") if isinstance(identity, dict) else None
    if saved is not None and saved != method:
        raise CheckpointError(
            f"{path} is a checkpoint of method '{saved}', not of '{method}' (this config's method): "
            f"evaluate it with `{_command_for(path, saved)}`",
            path=path,
        )
    return checkpoint


# --- choosing the checkpoint to resume from ----------------------------------------------------------
@dataclasses.dataclass
class ResumePoint:
    path: Path
    complete: bool  # training ended (last.ckpt): nothing to train for the same max_epochs
    max_epochs: int
    epoch: int
    global_step: int
    data: dict[str, Any] | None = None  # the training split's fingerprint (datamodules.fingerprint)


def _check_resume_checkpoint(path: Path) -> ResumePoint:
    checkpoint = safe_torch_load(path)
    marker = checkpoint.get(RESUME_KEY) if isinstance(checkpoint, dict) else None
    missing = [k for k in ("state_dict", "loops", "optimizer_states") if k not in (checkpoint or {})]
    if not isinstance(marker, dict) or marker.get("format") != RESUME_FORMAT or missing:
        raise ValueError(f"not a zsad training checkpoint (missing {missing or [RESUME_KEY]})")
    return ResumePoint(
        path=path,
        complete=bool(marker["complete"]),
        max_epochs=int(marker["max_epochs"]),
        epoch=int(checkpoint.get("epoch", 0)),
        global_step=int(checkpoint.get("global_step", 0)),
        data=marker.get("data"),
    )


def _candidates(run_dir: Path) -> list[Path]:
    """Newest first: last.ckpt, then the resume checkpoints by step (their names sort by step)."""
    last = last_checkpoint(run_dir)
    resume = sorted(resume_dir(run_dir).glob("step-*.ckpt"), reverse=True)
    return ([last] if last.is_file() else []) + resume


def has_training_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any training checkpoint a run would resume from (valid or not)."""
    return bool(_candidates(run_dir))


def find_resume_checkpoint(run_dir: Path, warn: bool = True) -> ResumePoint | None:
    """The newest readable training checkpoint of ``run_dir``; each unreadable one is named in a warning,
    and when none is valid the warning says that training starts from scratch."""
    rejected: list[str] = []
    for path in _candidates(run_dir):
        try:
            point = _check_resume_checkpoint(path)
        except Exception as error:  # noqa: BLE001 - truncated, corrupt, refused or foreign: try the next
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            if isinstance(error, CheckpointError):  # "PATH is truncated or corrupt (...)": say "it is ..."
                reason = reason.replace(f"{path} ", "it ", 1).removesuffix("; re-copy it")
            rejected.append(f"{path} ({reason})")
            if warn:
                log.warning("zsad: skipping checkpoint %s: it cannot be resumed from: %s", path, reason)
            continue
        if rejected and warn:
            log.warning("zsad: resuming from %s instead", path)
        return point
    if rejected and warn:
        log.warning("zsad: no valid checkpoint in %s; training restarts from scratch", run_dir)
    return None


def refuse_resume_on_other_data(point: ResumePoint, fingerprint: dict[str, Any], run_dir: Path) -> None:
    """Raises :class:`DataChangedError` naming the files added, removed or changed (other content) since
    ``point`` was trained, when a resume would continue on them: one run trained on two datasets belongs
    to no experiment. A checkpoint without a fingerprint (written before zsad recorded one) is resumed with
    a warning."""
    if point.data is None:
        log.warning("zsad: %s records no data fingerprint: the training data cannot be compared", point.path)
        return
    found = changes(point.data, fingerprint)
    if not any(found.values()):
        return
    first = next(name for kind in ("changed", "removed", "added") for name in found[kind])
    raise DataChangedError(
        f"run folder {run_dir} holds an unfinished run trained on other data: since {point.path.name}, the "
        f"training files below {fingerprint['root']} changed: {describe_changes(found)}; resuming would train "
        f"one run on two datasets. Restore those files to resume it, or start a fresh run on the data as "
        f"they are now: rm -r {run_dir / CHECKPOINT_DIR}, then the same command (or use another run_dir)",
        path=Path(fingerprint["root"]) / first,
    )


# --- divergence -------------------------------------------------------------------------------------
class TrainingDiverged(ZsadError):
    """A training step's loss was not finite: training stopped there, on every process, before any
    checkpoint of the weights that step made (status ``failed``; no ``last.ckpt``, no evaluation)."""

    _TEXT = re.compile(r"TrainingDiverged: (training diverged at [^\n]*)")

    @classmethod
    def recognise(cls, error: BaseException) -> TrainingDiverged | None:
        """``error`` as a divergence: this type, or its text re-raised from a ``ddp_spawn`` process."""
        if isinstance(error, cls):
            return error
        match = cls._TEXT.search(str(error))
        return cls(match.group(1)) if match else None


@contextlib.contextmanager
def divergence_as_one_line() -> Iterator[None]:
    """Around ``trainer.fit``: a divergence in a spawned process arrives as that process's traceback;
    it leaves as the one-line :class:`TrainingDiverged`."""
    try:
        yield
    except Exception as error:
        diverged = TrainingDiverged.recognise(error)
        if diverged is None or diverged is error:
            raise
        raise diverged from None


# --- interruptions (the signal record and TrainingInterrupted: pipelines.stop_signals) ---------------
def _log_this_step(trainer: L.Trainer) -> None:
    """Log the step that just ended, as Lightning does right after ``on_train_batch_end``: a stop raised
    there would lose its metrics, and the resumed session starts with the next step."""
    connector = trainer._logger_connector
    connector.on_batch_end()
    connector.update_train_step_metrics()


def seed_position(seed: int, *position: int | str) -> None:
    """Seed Python, NumPy and torch (all devices) from ``seed`` and a position in the training."""
    value = derived_seed(seed, *position)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class _StopOnSignal(Callback):
    """Stop signals only set a flag while a Trainer runs (its subclass stops at the next safe point);
    the handlers replace whatever is there (also Lightning's, whose SIGTERM in-handler broadcast would not
    match zsad's collective decision) and are restored at teardown. The flag is the process-wide record of
    :mod:`pipelines.stop_signals`, so a signal the job's guard recorded just before (the Trainer's setup)
    counts, and one that comes after the Trainer's last check still stops the job as the Trainer returns."""

    signals: tuple[str, ...] = STOP_SIGNALS

    def __init__(self) -> None:
        self._previous_handlers: dict[int, Any] = {}
        stop_signals.new_trainer()

    @property
    def _signal(self) -> int:
        """The first stop signal received (a number), 0 when none."""
        return stop_signals.received_signum()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if stop_signals.note_signal(signum) and signum == signal.SIGINT:  # a second Ctrl-C: stops now
            print("zsad: Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = int(getattr(signal, name))
            current = signal.getsignal(signum)
            if current != self._on_signal:
                self._previous_handlers.setdefault(signum, current)
                signal.signal(signum, self._on_signal)

    def restore_handlers(self) -> None:
        """The handlers from before this callback's, where its own are still installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous_handlers.items():
            if signal.getsignal(signum) == self._on_signal:  # bound methods: equal, never identical
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.restore_handlers()


def restore_signal_handlers(trainer: L.Trainer) -> None:
    """After a Trainer that an error stopped: Lightning then calls no ``teardown`` hook and puts back the
    handlers it found, which may be zsad's of that Trainer."""
    for callback in trainer.callbacks:
        if isinstance(callback, _StopOnSignal):
            callback.restore_handlers()


class RequeueEvaluation(_StopOnSignal):
    """SLURM's SIGUSR1 during an evaluation (test or predict): after the batch in progress, requeue the
    job (global rank 0) and stop as ``preempted``. Nothing is saved: the restarted job evaluates again
    from the same weights (a run's complete ``last.ckpt``, or ``checkpoint=``). SIGTERM and Ctrl-C stay
    Lightning's (``preempted`` / ``interrupted`` as well). Used instead of Lightning's auto-requeue, which
    would save an ``hpc_ckpt_*.ckpt`` that a later Trainer of the job might load."""

    signals = ("SIGUSR1",)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_handlers()  # after Lightning registered its own, which it restores at the end

    on_predict_start = on_test_start

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        """Each process by its own flag, without a collective (as Lightning's SIGTERM check in evaluation):
        under DDP ``predict`` gives the processes unequal numbers of batches, and srun signals them all."""
        if self._signal != signal.SIGUSR1:  # SIGTERM, Ctrl-C: Lightning's
            return
        if trainer.is_global_zero:
            stop_signals.requeue_slurm_job()
        raise TrainingInterrupted("SIGUSR1", None)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Under DDP a process that is ahead waits for the others inside the test step (the evaluator
        # gathers each complete category): it stops there too, or it would wait for processes that stopped.
        evaluator = getattr(pl_module, "evaluator", None)
        if evaluator is not None and hasattr(evaluator, "while_waiting"):
            evaluator.while_waiting = functools.partial(self._stop_if_signalled, trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_if_signalled(trainer)

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_if_signalled(trainer)


class ExactResume(_StopOnSignal):
    """Position-seeded randomness, periodic and on-signal checkpoints, and ``last.ckpt`` at the end."""

    def __init__(
        self,
        run_dir: Path,
        seed: int,
        max_epochs: int,
        checkpoint_minutes: float | None,
        setting: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.setting = setting  # the run's training setting (trained_setting), carried by every checkpoint
        self.seed = seed
        self.max_epochs = max_epochs
        self.interval_s = None if checkpoint_minutes is None else 60.0 * checkpoint_minutes
        self._last_save = time.monotonic()
        self._complete = False
        self._data: dict[str, Any] | None = None
        self._loss: torch.Tensor | None = None  # the last step's loss (this process), until agreed on
        self._accumulating = False  # inside a gradient-accumulation window (its losses are summed)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install_handlers()
            self._data = getattr(trainer.datamodule, "train_fingerprint", None)  # into every checkpoint

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_handlers()  # again: Lightning registers its handlers after setup
        self._last_save = time.monotonic()
        # The resumed loader's position (ResumableDataLoader.load_state_dict) reaches a train loader Lightning
        # builds after the checkpoint's restore; one built before it, when configure_optimizers reads
        # trainer.estimated_stepping_batches (Bayes-PFL's schedule length), is kept by FitLoop.setup_data,
        # which then skips the loading: the epoch would start again from its first batch. Load it here, before
        # the first batch is drawn (a no-op when the loop loaded it or nothing is to be loaded).
        trainer.fit_loop._load_combined_loader_states()

    # --- randomness -----------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_position(self.seed, trainer.current_epoch, "epoch", trainer.global_rank)
        self._accumulating = False  # Lightning steps the optimizer at every epoch's end

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed_position(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)

    # --- checkpoints ----------------------------------------------------------------------------------
    def _agree(self, trainer: L.Trainer) -> tuple[int, bool]:
        """(stop signal of any process, whether rank 0's clock says a checkpoint is due), the same on all.
        Raises :class:`TrainingDiverged` on every process, before anything is saved, when the last step's
        loss was not finite on any of them (one scalar read per step; under DDP it rides on the one
        all-reduce that already decides the checkpoints, so no process waits for one that stopped)."""
        due = (
            trainer.is_global_zero
            and self.interval_s is not None
            and time.monotonic() - self._last_save >= self.interval_s
        )
        device = trainer.strategy.root_device
        flags = torch.tensor([self._signal, int(due), 0], device=device)
        if self._loss is not None:
            flags[2] = (~torch.isfinite(self._loss.to(device))).any()
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="max")
        signum, due, diverged = flags.tolist()
        if diverged:
            self._diverge(trainer)
        return int(signum), bool(due)

    def _diverge(self, trainer: L.Trainer) -> None:
        loss = self._loss if self._loss is not None and not bool(torch.isfinite(self._loss).all()) else None
        found = (
            f"loss = {float(loss.float().flatten()[0]):g}"
            if loss is not None
            else "the loss of another process is not finite"
        )
        lr = getattr(getattr(trainer.lightning_module, "cfg", None), "lr", None)
        lower = f"lower method.lr (now {lr:g})" if isinstance(lr, int | float) else "lower the learning rate"
        raise TrainingDiverged(
            f"training diverged at epoch {trainer.current_epoch} step {trainer.global_step - 1}: {found}; "
            f"{lower} or check the data, in another run_dir (nothing was saved after the last finite step)"
        )

    def _save_resume(self, trainer: L.Trainer) -> Path:
        folder = resume_dir(self.run_dir)
        path = folder / f"step-{trainer.global_step:09d}.ckpt"
        trainer.save_checkpoint(
            path, weights_only=False
        )  # full state; explicit, else Lightning logs a line per save
        self._last_save = time.monotonic()
        if trainer.is_global_zero:
            for old in sorted(folder.glob("step-*.ckpt"), reverse=True)[KEEP_RESUME_CHECKPOINTS:]:
                old.unlink(missing_ok=True)
        return path

    def _stop(self, trainer: L.Trainer, signum: int, checkpoint: Path) -> None:
        interruption = TrainingInterrupted(signal.Signals(signum).name, checkpoint)
        if trainer.is_global_zero:
            # W&B first: a requeue's SIGTERM also stops W&B's service
            close_interrupted(trainer.loggers, interruption.state, interruption.exit_code)
            if interruption.signal_name == "SIGUSR1":
                stop_signals.requeue_slurm_job()
        raise interruption

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss = loss.detach() if isinstance(loss, torch.Tensor) else None
        if self._accumulating and loss is not None and self._loss is not None:
            loss = loss + self._loss  # a non-finite loss anywhere in the accumulation window stays one
        self._loss = loss
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch-end checkpoint follows (after the same agreement)
        # with trainer.accumulate_grad_batches, a checkpoint (or a stop) only after an optimizer step: the
        # gradients summed so far are in no checkpoint
        self._accumulating = (batch_idx + 1) % trainer.accumulate_grad_batches != 0
        if self._accumulating:
            return
        signum, due = self._agree(trainer)
        if signum or due:
            path = self._save_resume(trainer)
            if signum:
                stop_signals.note_saved(path)  # the job names it however it ends: W&B's service, signalled
                _log_this_step(trainer)  # too, may fail the logging of this step
                self._stop(trainer, signum, path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signum, _ = self._agree(trainer)
        path = self._save_resume(trainer)
        if signum:
            stop_signals.note_saved(path)
            self._stop(trainer, signum, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._complete = True
        trainer.save_checkpoint(last_checkpoint(self.run_dir), weights_only=False)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RESUME_KEY] = {
            "format": RESUME_FORMAT,
            "complete": self._complete,
            "max_epochs": self.max_epochs,
            "data": self._data,
            "setting": self.setting,
        }
