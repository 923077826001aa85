"""Experiment loggers: a CSV log always, Weights & Biases unless disabled (offline by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

from pipelines.config import ExperimentConfig
from pipelines.errors import ConfigError

WANDB_MODES = ("offline", "online", "disabled")


def make_loggers(
    cfg: ExperimentConfig, run_dir: Path, job_type: str, run_id: str | None = None
) -> list[Logger]:
    """``run_id`` keeps one W&B run across a requeued job's restarts (``resume="allow"``)."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="logs")]
    wandb_cfg = cfg.logger.wandb
    if wandb_cfg.mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode must be one of {WANDB_MODES}, got '{wandb_cfg.mode}'")
    if wandb_cfg.mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                name=cfg.name,
                save_dir=str(run_dir),
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                group=wandb_cfg.group,
                tags=list(wandb_cfg.tags),
                job_type=job_type,
                mode=wandb_cfg.mode,
                id=run_id,
                resume="allow" if run_id else None,
                config=_flat_config(cfg),
            )
        )
    return loggers


def _flat_config(cfg: ExperimentConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def log_evaluation(loggers: list[Logger], target: str, payload: dict[str, Any]) -> None:
    """Per-category table and mean metrics of one target, into every logger that takes them."""
    from lightning.pytorch.loggers import WandbLogger

    from pipelines.results import METRICS

    means = {f"eval/{target}/{m}": v for m, v in payload["mean"].items() if v is not None}
    for logger in loggers:
        if means:
            logger.log_metrics(means)
        if isinstance(logger, WandbLogger):
            columns = ["category", "n_normal", "n_anomalous", *METRICS]
            rows = [
                [c, v.get("n_normal"), v.get("n_anomalous"), *(v.get(m) for m in METRICS)]
                for c, v in payload["categories"].items()
            ]
            logger.log_table(key=f"eval/{target}/per_category", columns=columns, data=rows)
            for key, value in means.items():
                logger.experiment.summary[key] = value


def wandb_hint(loggers: list[Logger]) -> str | None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger.experiment.settings, "mode", "") == "offline":
            return f"W&B run saved offline; upload it with: wandb sync {logger.experiment.dir.rsplit('/files', 1)[0]}"
    return None
