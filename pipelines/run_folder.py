"""A run's folder: where it is (every process of a job agrees on one), what it holds, and whether this config
may use it (a finished run of the same config is reported instead of redone; another config's finished or
unfinished run is refused, naming the keys that differ). Who owns the folder and how it stands
(``run.lock``, ``status.json``) is :mod:`pipelines.run_state`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from datamodules.atomic_io import atomic_write_text, write_error
from datamodules.errors import FinishedRunError, RunFolderError, UnfinishedRunError
from pipelines.checkpointing import has_training_checkpoints
from pipelines.config import (
    RESUME_NEUTRAL_KEYS,
    ExperimentConfig,
    config_differences,
    to_yaml,
)
from pipelines.protocol import has_finished_draws
from pipelines.run_state import global_rank, read_status

RUN_DIR_ENV = "ZSAD_RUN_DIR"
CONFIG_FILE = "config.yaml"


@dataclasses.dataclass
class RunOutcome:
    run_dir: Path
    checkpoint: Path | None = None
    results: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: bool = False


def resolve_run_dir(cfg: ExperimentConfig) -> Path:
    """One folder per run that every process agrees on.

    ``run_dir`` when set (sweeps), else ``$ZSAD_RUN_DIR`` (set for processes Lightning launches), else one
    folder per SLURM job (a requeued job keeps its id and so its folder), else a new timestamped folder.
    """
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    base = Path(cfg.output_dir) / cfg.name
    if os.environ.get("SLURM_JOB_ID"):
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return base / (f"slurm-{job}_{task}" if task else f"slurm-{job}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, suffix = base / stamp, 1
    while run_dir.exists():  # never reuse a finished run's folder by accident
        run_dir, suffix = base / f"{stamp}-{suffix}", suffix + 1
    return run_dir


def prepare_run_dir(cfg: ExperimentConfig) -> Path:
    run_dir = resolve_run_dir(cfg)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP processes that Lightning starts inherit it
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(run_dir, error) from error
    return run_dir


def write_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    """``config.yaml``: the fully resolved config (rank 0; left alone when it already says the same)."""
    path, text = run_dir / CONFIG_FILE, to_yaml(cfg)
    if global_rank() != 0 or (path.is_file() and path.read_text() == text):
        return
    atomic_write_text(path, text)


def _refuse_another_config(
    cfg: ExperimentConfig,
    run_dir: Path,
    ignore: tuple[str, ...],
    error: type[RunFolderError],
    held: str,
    todo: str,
    longer_training: bool = False,
) -> None:
    """Raises ``error`` naming the keys (at most 8 shown) in which ``cfg`` differs from the folder's
    ``config.yaml`` (none: nothing to refuse), except ``ignore`` and, with ``longer_training``, a larger
    ``trainer.max_epochs``."""
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        return
    old, new = yaml.safe_load(config_file.read_text()) or {}, yaml.safe_load(to_yaml(cfg))
    differences = config_differences(old, new, ignore=ignore)
    if longer_training and "trainer.max_epochs" in differences:
        before = (old.get("trainer") or {}).get("max_epochs")
        if isinstance(before, int) and cfg.trainer.max_epochs > before:
            differences.remove("trainer.max_epochs")
    if differences:
        more = len(differences) - 8
        shown = ", ".join(differences[:8]) + (f" and {more} more" if more > 0 else "")
        raise error(
            f"run folder {run_dir} holds {held} of a different config (differs in {shown}); {todo}",
            path=config_file,
        )


def refuse_resume_of_another_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Raises :class:`UnfinishedRunError` when ``run_dir`` holds training checkpoints of an unfinished
    run whose config differs from ``cfg`` in anything but :data:`RESUME_NEUTRAL_KEYS` or a larger
    ``trainer.max_epochs`` (continuing the training is the uninterrupted longer run: randomness and data
    order depend on the position only, and no schedule depends on max_epochs): resuming would mix two
    configs' training. Finished few-shot draws count like checkpoints: a resume keeps them."""
    if has_training_checkpoints(run_dir) or has_finished_draws(run_dir):
        _refuse_another_config(
            cfg, run_dir, RESUME_NEUTRAL_KEYS, UnfinishedRunError, "an unfinished run",
            "resume it with the same config, or use another run_dir", longer_training=True,
        )  # fmt: skip


def finished_run(cfg: ExperimentConfig, run_dir: Path, job_type: str) -> RunOutcome | None:
    """A finished run in ``run_dir``: the outcome to report instead of running again when it is this
    config's (training only, or with results for evaluating jobs), else None.

    Raises :class:`FinishedRunError` when the folder holds a finished run of another config: its results
    and ``config.yaml`` are never replaced by those of a different experiment."""
    if read_status(run_dir).get("state") != "finished":
        return None
    _refuse_another_config(  # the keys a resume may change change no result: a run resumed with them is this one
        cfg, run_dir, RESUME_NEUTRAL_KEYS, FinishedRunError, "a finished run",
        "use another run_dir, or delete that folder to redo it",
    )  # fmt: skip
    results_file = run_dir / "results.json"
    if results_file.is_file():
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        return RunOutcome(
            run_dir,
            checkpoint if checkpoint.is_file() else None,
            results=json.loads(results_file.read_text()),
            skipped=True,
        )
    if job_type == "train":
        return RunOutcome(run_dir, run_dir / "checkpoints" / "last.ckpt", skipped=True)
    return None  # trained here with this very config, not evaluated yet: evaluate


def wandb_run_id(run_dir: Path) -> str:
    """Stable per run folder, so a requeued run continues the same W&B run."""
    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
