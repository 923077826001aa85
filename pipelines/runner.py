"""The three jobs: train on a source, test on targets, or run both (the zero-shot protocol)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from datamodules.datamodule import AnomalyDataModule
from lightning_modules.base import ZeroShotModule
from lightning_modules.registry import get_method
from pipelines.config import ExperimentConfig, to_yaml
from pipelines.errors import ConfigError
from pipelines.loggers import log_evaluation, make_loggers, wandb_hint
from pipelines.results import target_payload, write_results

# The frozen CLIP stays in eval mode during training on purpose; this warning would only confuse users.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Raised inside Lightning itself with recent torch; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


@dataclasses.dataclass
class RunOutcome:
    run_dir: Path
    checkpoint: Path | None = None
    results: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def prepare_run_dir(cfg: ExperimentConfig) -> Path:
    """``run_dir`` if set (sweeps and requeued jobs reuse it), else a new timestamped folder."""
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.output_dir) / cfg.name / stamp
        suffix = 1
        while run_dir.exists():  # never reuse a finished run's folder by accident
            run_dir = Path(cfg.output_dir) / cfg.name / f"{stamp}-{suffix}"
            suffix += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return run_dir


def build_module(cfg: ExperimentConfig) -> ZeroShotModule:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return get_method(cfg.method.name).build_module(cfg.method, cfg.eval)


def _devices(value: str) -> int | str | list[int]:
    value = str(value).strip()
    if value.isdigit():
        return int(value)
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return value


def make_trainer(
    cfg: ExperimentConfig, run_dir: Path, loggers: list[Logger], training: bool, inference_mode: bool = True
) -> L.Trainer:
    callbacks = []
    if training:
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0))
    t = cfg.trainer
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=training,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        inference_mode=inference_mode,
    )


def _datamodule(data_cfg: Any, module: ZeroShotModule) -> AnomalyDataModule:
    datamodule = AnomalyDataModule(data_cfg, image_size=module.image_size)
    _ = datamodule.full_index  # parse now: a wrong root fails before any training time is spent
    return datamodule


def fit(cfg: ExperimentConfig, module: ZeroShotModule, run_dir: Path, loggers: list[Logger]) -> Path:
    if cfg.source is None:
        raise ConfigError("training needs a source dataset: set defaults.source in the experiment or source=NAME")
    datamodule = _datamodule(cfg.source, module)
    trainer = make_trainer(cfg, run_dir, loggers, training=True)
    trainer.fit(module, datamodule=datamodule)
    return run_dir / "checkpoints" / "last.ckpt"


def target_datamodules(cfg: ExperimentConfig, module: ZeroShotModule) -> list[AnomalyDataModule]:
    if not cfg.targets:
        raise ConfigError("no targets to evaluate: set defaults.targets in the experiment or targets=[NAME,...]")
    return [_datamodule(target, module) for target in cfg.targets]


def evaluate(
    cfg: ExperimentConfig,
    module: ZeroShotModule,
    run_dir: Path,
    loggers: list[Logger],
    results: dict[str, Any],
    datamodules: list[AnomalyDataModule],
) -> dict[str, Any]:
    """Test on every target; results files are rewritten after each one."""
    trainer = make_trainer(cfg, run_dir, loggers, training=False, inference_mode=not module.needs_grad_at_test)
    keys = _target_keys(cfg)
    for key, target, datamodule in zip(keys, cfg.targets, datamodules, strict=True):
        trainer.test(module, datamodule=datamodule, verbose=False)
        if not trainer.is_global_zero:
            continue
        index = datamodule.test_index
        details = {
            "root": str(index.root),
            "version": index.version,
            "split": target.test_split,
            "image_size": module.image_size,
            "eval_size": datamodule.eval_size,
            "mask_interpolation": target.mask_interpolation,
            "n_images": len(index.records),
        }
        payload = target_payload(target.name, index.counts(), module.test_results, details)
        results["targets"][key] = payload
        write_results(run_dir, results)
        log_evaluation(loggers, key, payload)
    return results


def _target_keys(cfg: ExperimentConfig) -> list[str]:
    """Unique result keys: the dataset name, or name@root-folder when a dataset appears twice."""
    names = [t.name for t in cfg.targets]
    return [n if names.count(n) == 1 else f"{n}@{Path(t.root).name}" for n, t in zip(names, cfg.targets, strict=True)]


def _results_header(cfg: ExperimentConfig, run_dir: Path, checkpoint: Path | None) -> dict[str, Any]:
    return {
        "experiment": cfg.name,
        "method": cfg.method.name,
        "source": cfg.source.name if cfg.source else None,
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "eval": dataclasses.asdict(cfg.eval),
        "targets": {},
    }


def train(cfg: ExperimentConfig) -> RunOutcome:
    run_dir = prepare_run_dir(cfg)
    module = build_module(cfg)
    loggers = make_loggers(cfg, run_dir, job_type="train")
    checkpoint = fit(cfg, module, run_dir, loggers)
    return RunOutcome(run_dir, checkpoint, notes=_notes(loggers))


def test(cfg: ExperimentConfig) -> RunOutcome:
    module = build_module(cfg)
    spec = get_method(cfg.method.name)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else None
    if spec.trains and checkpoint is None:
        raise ConfigError(
            f"method '{spec.name}' is trained: pass checkpoint=RUN_DIR/checkpoints/last.ckpt (written by `zsad train`)"
        )
    if checkpoint is not None:
        module.load_trained_weights(str(checkpoint))
    datamodules = target_datamodules(cfg, module)
    run_dir = prepare_run_dir(cfg)
    loggers = make_loggers(cfg, run_dir, job_type="eval")
    results = evaluate(cfg, module, run_dir, loggers, _results_header(cfg, run_dir, checkpoint), datamodules)
    return RunOutcome(run_dir, checkpoint, results, notes=_notes(loggers))


def run(cfg: ExperimentConfig) -> RunOutcome:
    """Train on the source (its test split, by the zero-shot protocol), then evaluate every target."""
    module = build_module(cfg)
    datamodules = target_datamodules(cfg, module)  # a wrong target root fails before training, not after
    run_dir = prepare_run_dir(cfg)
    loggers = make_loggers(cfg, run_dir, job_type="run")
    checkpoint = None
    if get_method(cfg.method.name).trains:
        checkpoint = fit(cfg, module, run_dir, loggers)
    results = evaluate(cfg, module, run_dir, loggers, _results_header(cfg, run_dir, checkpoint), datamodules)
    return RunOutcome(run_dir, checkpoint, results, notes=_notes(loggers))


def _notes(loggers: list[Logger]) -> list[str]:
    hint = wandb_hint(loggers)
    for logger in loggers:
        logger.finalize("success")
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()  # W&B: close the run so the next one in this process starts clean
    return [hint] if hint else []


def load_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())
