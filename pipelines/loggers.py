"""Experiment loggers: a CSV log always, Weights & Biases unless disabled (offline by default)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig

from datamodules.atomic_io import atomic_write_text, write_error
from datamodules.errors import ConfigError, ZsadError
from pipelines.config import GROUPS, PLACEMENT_KEYS, ExperimentConfig, source_label, wandb_tag

WANDB_MODES = ("offline", "online", "disabled")


def make_loggers(
    cfg: ExperimentConfig, run_dir: Path, job_type: str, run_id: str | None = None
) -> list[Logger]:
    """``run_id`` keeps one W&B run across a requeued job's restarts (``resume="allow"``); the restart is
    recorded in it (:func:`record_restart`)."""
    loggers: list[Logger] = [AppendingCSVLogger(save_dir=str(run_dir), name="", version="logs")]
    wandb_cfg = cfg.logger.wandb
    if wandb_cfg.mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode must be one of {WANDB_MODES}, got '{wandb_cfg.mode}'")
    if wandb_cfg.mode != "disabled":
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        wandb_logger = WandbLogger(
            name=display_name(cfg),
            save_dir=str(run_dir),
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            group=wandb_cfg.group or cfg.name,  # runs outside sweeps: grouped by experiment
            tags=[wandb_tag(str(tag)) for tag in wandb_cfg.tags],
            job_type=job_type,
            mode=wandb_cfg.mode,
            id=run_id,
            resume="allow" if run_id else None,
            config=_flat_config(cfg),
            # no banner or run summary: zsad prints its own. Offline, W&B prints its header (offline
            # notice, local folder, `wandb leet` hint) even when quiet; zsad's closing line names the
            # folder and the `wandb sync` command. Only this run's printer: W&B's warnings still show.
            settings=wandb.Settings(quiet=True, silent=wandb_cfg.mode == "offline"),
        )
        # Lightning always passes anonymous=None, which wandb now warns about at every run
        wandb_logger._wandb_init.pop("anonymous", None)
        restarts = _earlier_sessions(run_dir, run_id) if run_id else 0
        loggers.append(wandb_logger)
        if restarts:
            record_restart(wandb_logger, restarts)
    return loggers


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes ``metrics.csv`` when its folder exists; a resumed run appends to it
    (with the columns it already has, so rows of earlier sessions keep their values)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))

    def save(self) -> None:
        """Lightning's append; a failure (a full disk) names ``metrics.csv`` and the free space."""
        try:
            super().save()
        except OSError as error:
            raise write_error(Path(self.metrics_file_path), error) from error


class AppendingCSVLogger(CSVLogger):
    """``logs/metrics.csv`` that keeps every epoch across the restarts of a run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def drop_redone_training_rows(loggers: list[Logger], first_step: int) -> None:
    """Before a training resumes at ``first_step`` (the resume checkpoint's global step; 0 when it starts
    over), remove the CSV rows the training loop logged (they carry an ``epoch``) from that step on: an
    earlier session that ran past its last checkpoint logged them, and the resumed session logs them again.
    Call on global rank 0 only."""
    for logger in loggers:
        if not isinstance(logger, AppendingCSVLogger):
            continue
        path = Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            continue
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            columns, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if not _redone(row, first_step)]
        if len(kept) == len(rows):
            continue
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, text.getvalue())


def _redone(row: dict[str, str], first_step: int) -> bool:
    step = row.get("step") or ""
    return bool(row.get("epoch")) and step.isdigit() and int(step) >= first_step


def _earlier_sessions(run_dir: Path, run_id: str) -> int:
    """W&B sessions of run ``run_id`` already in ``run_dir/wandb`` (offline or online folders)."""
    return sum(1 for _ in (Path(run_dir) / "wandb").glob(f"*run-*-{run_id}*"))


def record_restart(logger: Logger, restarts: int) -> None:
    """Say in the W&B run that this session continues an interrupted one: ``zsad/restarts`` (summary)
    and a ``zsad/restart`` point in the history."""
    experiment = logger.experiment
    experiment.summary["zsad/restarts"] = restarts
    experiment.log({"zsad/restart": restarts})


def close_interrupted(loggers: list[Logger], state: str, exit_code: int) -> None:
    """Flush and close the W&B run of an interrupted session while its service still runs (before a
    requeue, whose SIGTERM also stops the service), recording ``zsad/state``; best effort."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            try:
                logger.experiment.summary["zsad/state"] = state
                logger.experiment.finish(exit_code=exit_code)
            except Exception as error:  # noqa: BLE001 - the service may be gone already (SIGTERM)
                print(f"zsad: could not close the W&B run: {type(error).__name__}: {error}")


def display_name(cfg: Any, varied: Sequence[str] = ()) -> str:
    """``logger.wandb.name``, else method, data, protocol, ``varied`` settings and seed, e.g.
    ``vand synthetic_source->synthetic_target zero-shot lr=0.01 seed=111``, ``winclip mvtec 4-shot (5 draws)
    seed=111`` (the experiment is the run's group)."""
    from pipelines.protocol import protocol_label

    if cfg.logger.wandb.name:
        return cfg.logger.wandb.name
    targets = [t.name for t in cfg.targets]
    data = ",".join(targets) if len(targets) <= 3 else f"{len(targets)} targets"
    source = source_label(cfg)  # several sources: joined by "+"
    if source is not None:
        data = f"{source}->{data}" if targets else source
    protocol = protocol_label(cfg.protocol)
    return " ".join([cfg.method.name, *([data] if data else []), protocol, *varied, f"seed={cfg.seed}"])


def differing_overrides(experiment: str | Path, overrides: Sequence[str], cfg: DictConfig) -> list[str]:
    """The command-line ``key=value`` overrides that change ``cfg`` from what the experiment file alone
    composes to (``seed=111`` when the file says 111 does not), leaving out where files go and how the run
    is shown (``run_dir``, ``logger.*``, ...). All of them when the file alone does not compose."""
    from omegaconf import OmegaConf

    from pipelines.config import compose, parse_override

    try:
        alone: DictConfig | None = compose(experiment, [])
    except ZsadError:  # e.g. a value the file leaves to the command line
        alone = None
    differing = []
    for text in overrides:
        key, _ = parse_override(text)
        if any(key == k or key.startswith(f"{k}.") for k in PLACEMENT_KEYS):
            continue
        if alone is not None:
            before, after = (OmegaConf.select(c, key, default=None) for c in (alone, cfg))
            if _plain(before) == _plain(after):
                continue
        differing.append(text.strip())
    return differing


def _plain(value: Any) -> Any:
    from omegaconf import Container, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def label_adhoc_run(cfg: DictConfig, experiment: str | Path, overrides: Sequence[str]) -> None:
    """Name, group and tag a run started from the command line as sweeps do theirs (in ``cfg``, where the
    user has not): the name says method, data, the overrides that differ from the experiment file and the
    seed; the group is the experiment; the tags are those overrides. Every session of the run gets the same."""
    wandb_cfg = cfg.logger.wandb
    varied = differing_overrides(experiment, overrides, cfg)
    shown = [
        f"{key.rsplit('.', 1)[-1]}={value}"
        for key, _, value in (text.partition("=") for text in varied)
        if key not in ("seed", "checkpoint", *GROUPS)  # the name shows these itself, or is too long
        and not key.startswith("protocol.")  # shown as the protocol's label
    ]
    if not wandb_cfg.name:
        wandb_cfg.name = display_name(cfg, shown)
    if not wandb_cfg.group:
        wandb_cfg.group = cfg.name
    if not wandb_cfg.tags:
        wandb_cfg.tags = [wandb_tag(text) for text in varied]


def log_references(loggers: list[Logger], plan: dict[str, Any]) -> None:
    """A few-shot run's reference files (per draw, target and category) into the loggers' hyperparameters:
    W&B's config (``references.draw{d}.{target}.{category}``), the CSV log's hparams.yaml. Rank 0 only."""
    from pipelines.protocol import references_config

    for logger in loggers:
        logger.log_hyperparams({"references": references_config(plan)})


def _flat_config(cfg: ExperimentConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def evaluation_scalars(target: str, payload: dict[str, Any]) -> dict[str, float]:
    """``eval/{target}/{metric}`` (the category mean) and ``eval/{target}/{category}/{metric}``; undefined
    metrics are left out (results.json says why)."""
    scalars = {f"eval/{target}/{m}": v for m, v in payload["mean"].items() if v is not None}
    for category, values in payload["categories"].items():
        scalars.update(
            {
                f"eval/{target}/{category}/{m}": values[m]
                for m in _metrics(payload)
                if values.get(m) is not None
            }
        )
    return scalars


def _metrics(payload: dict[str, Any]) -> tuple[str, ...]:
    """The target's metric columns: every result's, plus the sample-level and sPRO ones where it has them."""
    from pipelines.results import EXTRA_METRICS, METRICS

    return (*METRICS, *(m for m in EXTRA_METRICS if m in payload["mean"]))


def log_evaluation(loggers: list[Logger], target: str, payload: dict[str, Any]) -> None:
    """One target's metrics, mean and per category, as scalars into every logger; in W&B also as summary
    values (what the runs table and parallel-coordinates plots compare) and as a per-category table."""
    from lightning.pytorch.loggers import WandbLogger

    scalars = evaluation_scalars(target, payload)
    metrics = _metrics(payload)
    for logger in loggers:
        if scalars:
            logger.log_metrics(scalars)
        if isinstance(logger, WandbLogger):
            columns = ["category", "n_normal", "n_anomalous", *metrics]
            rows = [
                [c, v.get("n_normal"), v.get("n_anomalous"), *(v.get(m) for m in metrics)]
                for c, v in payload["categories"].items()
            ]
            logger.log_table(key=f"eval/{target}/per_category", columns=columns, data=rows)
            logger.experiment.summary.update(scalars)


def wandb_hint(loggers: list[Logger]) -> str | None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger.experiment.settings, "mode", "") == "offline":
            # every session of the run (one folder each, a requeued run has several) in one call: W&B
            # syncs the folders of one run id one after another, the later ones resuming it
            sessions = Path(logger.experiment.dir).parent.parent
            return f"W&B run saved offline; upload it with: wandb sync {sessions}"
    return None


def log_pictures(loggers: list[Logger], target: str, pictures: dict[str, Path], gallery: list) -> None:
    """One target's evaluation pictures into W&B (``pipelines.visualize``): every PNG as a ``wandb.Image``
    under ``plots/{target}/{category}/{curves|gallery}``, and the gallery as a table ``plots/{target}/gallery``
    of (category, path, label, score, image with ground-truth and predicted masks, heatmap overlay)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import numpy as np
        import wandb

        payload: dict[str, Any] = {
            f"plots/{target}/{key}": wandb.Image(str(path), caption=f"{target}/{key}")
            for key, path in pictures.items()
        }
        rows = []
        for category, row in gallery:
            masks = {}
            for name, mask in (("ground_truth", row.item.mask), ("prediction", row.predicted)):
                if mask is not None:
                    labels = {
                        0: "normal",
                        1: "anomalous" if name == "ground_truth" else "predicted anomalous",
                    }
                    masks[name] = {"mask_data": np.asarray(mask, dtype=np.uint8), "class_labels": labels}
            rows.append(
                [
                    category,
                    row.item.image_path,
                    row.item.label,
                    row.item.score,
                    wandb.Image(row.image, masks=masks or None),
                    None if row.heatmap is None else wandb.Image(row.heatmap),
                ]
            )
        if rows:
            columns = ["category", "image_path", "label", "score", "image", "anomaly_map"]
            payload[f"plots/{target}/gallery"] = wandb.Table(columns=columns, data=rows)
        if payload:
            logger.experiment.log(payload)
