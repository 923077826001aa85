"""The three jobs: train on a source, test on targets, or run both (the zero-shot protocol).

Each job looks its method's spec up once (``MethodSpec``: what the method provides) and refuses what the
config alone shows to be wrong before any model, data or run folder exists; then it builds the module and
the datamodules and runs :func:`fit` and/or :func:`evaluate` inside its frame (:mod:`pipelines.job`: the
run folder and its lock, config and status files, stop signals, loggers). A run that was preempted resumes
exactly from its newest checkpoint in that folder (:mod:`pipelines.checkpointing`); only global rank 0
writes results.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import ConfigError
from datamodules.multi_source import MultiSourceDataModule
from datamodules.progress import lightning_progress_bar
from datamodules.references import ReferenceDraw
from lightning_modules.base import ZeroShotModule
from lightning_modules.feature_cache import CachedTraining
from lightning_modules.method_spec import MethodSpec
from lightning_modules.metrics.curves import f1_thresholds
from lightning_modules.registry import get_method
from pipelines import stop_signals
from pipelines.checkpointing import (
    AtomicCheckpointIO,
    ExactResume,
    RequeueEvaluation,
    divergence_as_one_line,
    find_resume_checkpoint,
    last_checkpoint,
    read_trained_checkpoint,
    refuse_resume_on_other_data,
    restore_signal_handlers,
)
from pipelines.config import ExperimentConfig, source_configs, source_label, to_yaml
from pipelines.job import LIGHTNING_DIR, Job, run_job
from pipelines.loggers import drop_redone_training_rows, log_evaluation, log_references
from pipelines.map_writer import MapWriter
from pipelines.protocol import (
    check_protocol,
    finished,
    protocol_header,
    record_result,
    reference_plan,
    resumed_draws,
    skipped_references,
)
from pipelines.results import target_payload, write_results
from pipelines.run_folder import RunOutcome
from pipelines.run_state import global_rank
from pipelines.stop_signals import stop_signal_guard
from pipelines.trained_with import (
    checkpoint_record,
    refuse_other_training_source,
    trained_setting,
)
from pipelines.visualize import EvaluationPictures

# The frozen CLIP stays in eval mode during training on purpose; this warning would only confuse users.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Raised inside Lightning itself with recent torch; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# Printed by Lightning at every Trainer start on machines with srun; zsad's SLURM path does use srun.
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
_said_once: set[str] = set()


def _lightning_info(record: logging.LogRecord) -> bool:
    """Lightning's lines at every Trainer start (a job has several): its litlogger advertisement never,
    the accelerators it found ("GPU available: ...", "TPU available: ...") once per process."""
    message = record.getMessage()
    if message.startswith(("GPU available: ", "TPU available: ")):
        if message in _said_once:
            return False
        _said_once.add(message)
    return "litlogger" not in message


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_lightning_info)


# --- trainer -----------------------------------------------------------------------------------------
def build_module(cfg: ExperimentConfig, spec: MethodSpec) -> ZeroShotModule:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return spec.build_module(cfg.method, cfg.eval)


def _devices(value: str) -> int | str | list[int]:
    value = str(value).strip()
    if value.isdigit():
        return int(value)
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return value


class _Float32MatmulPrecision(Callback):
    """Applies ``trainer.float32_matmul_precision`` in ``setup``, i.e. in every process of the run (the
    processes ``ddp_spawn`` starts do not inherit the launching process's setting)."""

    def __init__(self, precision: str) -> None:
        self.precision = precision

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_float32_matmul_precision(self.precision)


def make_trainer(
    cfg: ExperimentConfig,
    run_dir: Path,
    loggers: list[Logger],
    training: bool,
    inference_mode: bool = True,
    callbacks: list[Callback] | None = None,
) -> L.Trainer:
    t = cfg.trainer
    callbacks = [*(callbacks or []), _Float32MatmulPrecision(t.float32_matmul_precision.value)]
    if t.enable_progress_bar:
        callbacks.append(lightning_progress_bar())  # whole lines when the output is a log file
    plugins: list[Any] = []
    if training:
        setting = trained_setting(yaml.safe_load(to_yaml(cfg)))
        callbacks.append(ExactResume(run_dir, cfg.seed, t.max_epochs, t.checkpoint_minutes, setting))
        plugins.append(AtomicCheckpointIO())
    else:
        callbacks.append(RequeueEvaluation())
    if SLURMEnvironment.detect():  # zsad requeues on SIGUSR1 itself (ExactResume, RequeueEvaluation)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        # Where Lightning writes and, under SLURM, *finds* requeue checkpoints (hpc_ckpt_*.ckpt): a Trainer
        # would load the newest one into the module, replacing the weights training ended with (test) or
        # resuming from a point zsad did not choose (fit). zsad's checkpoints live in RUN/checkpoints/.
        default_root_dir=str(run_dir / LIGHTNING_DIR),
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=plugins or None,
        enable_checkpointing=False,  # ExactResume writes the checkpoints
        log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        inference_mode=inference_mode,
    )


def method_datamodule(
    cfg: ExperimentConfig, spec: MethodSpec, data_cfg: Any, training: bool = False
) -> AnomalyDataModule:
    """``data_cfg``'s datamodule at the method's input size, with its authors' preprocessing there and, for
    the training source, their training augmentation there (``MethodSpec.train_augmentation``)."""
    datamodule = AnomalyDataModule(
        data_cfg,
        image_size=spec.image_size(cfg.method),
        preprocessing=spec.preprocessing(cfg.method, data_cfg.name),
        seed=cfg.seed,
        augmentation=spec.augmentation_on(cfg.method, data_cfg.name) if training else None,
    )
    _ = datamodule.full_index  # parse now: a wrong root fails before any training time is spent
    return datamodule


def training_datamodule(cfg: ExperimentConfig, spec: MethodSpec) -> AnomalyDataModule | MultiSourceDataModule:
    """The source's datamodule, or one training set of several sources (each read by its own parser with
    the method's preprocessing for that dataset; docs/datasets.md, "Training on several datasets")."""
    sources = source_configs(cfg)
    if not sources:
        raise ConfigError(
            "training needs a source dataset: set defaults.source in the experiment or source=NAME "
            "(several: source=[A,B])"
        )
    parts = [method_datamodule(cfg, spec, source, training=True) for source in sources]
    return parts[0] if len(parts) == 1 else MultiSourceDataModule(parts, seed=cfg.seed)


def fit(cfg: ExperimentConfig, spec: MethodSpec, module: ZeroShotModule, job: Job) -> Path:
    """Train on the source(s), resuming exactly from the run folder's newest valid checkpoint
    (:mod:`pipelines.checkpointing`); a training that already ended is not repeated: its final weights
    are loaded. A method with a feature cache trains on its frozen features, encoded once
    (:class:`~lightning_modules.feature_cache.CachedTraining`)."""
    datamodule = training_datamodule(cfg, spec)
    run_dir, loggers = job.run_dir, job.loggers
    module.run_dir = run_dir
    resume = find_resume_checkpoint(run_dir, warn=global_rank() == 0)
    if resume is not None and resume.complete and resume.max_epochs == cfg.trainer.max_epochs:
        module.load_trained_weights(str(resume.path))
        return resume.path
    if resume is not None:  # never one training on two datasets
        refuse_resume_on_other_data(resume, datamodule.train_fingerprint, run_dir)
    if global_rank() == 0:
        drop_redone_training_rows(loggers, resume.global_step if resume else 0)
    callbacks = [CachedTraining(datamodule, spec.feature_cache(cfg.method))] if spec.feature_cache else []
    trainer = make_trainer(cfg, run_dir, loggers, training=True, callbacks=callbacks)
    ckpt_path = resume and str(resume.path)
    try:
        with stop_signals.under_trainer(trainer), divergence_as_one_line():  # its safe points decide
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        restore_signal_handlers(trainer)
    return last_checkpoint(run_dir)


def method_protocols(cfg: ExperimentConfig, spec: MethodSpec) -> list[dict[str, Any] | None]:
    """Per target, the method's protocol there as its results record it (None: the method declares none);
    a protocol the method refuses on a target raises ConfigError before any model, data or run folder."""
    return [spec.protocol_on(cfg.method, target.name) for target in cfg.targets]


def planned_processes(cfg: ExperimentConfig) -> int | None:
    """How many processes the trainer config asks for, when the config says (a count or a list of device
    ids, times the nodes); None when Lightning decides (``devices=auto`` or ``-1``)."""
    devices = _devices(cfg.trainer.devices)
    if isinstance(devices, list):
        return len(devices) * cfg.trainer.num_nodes
    if isinstance(devices, int) and devices > 0:
        return devices * cfg.trainer.num_nodes
    return None


def refuse_inexact_ddp(cfg: ExperimentConfig, spec: MethodSpec, processes: int | None) -> None:
    """A multi-process evaluation that would not equal one process (``MethodSpec.ddp_refusal``) is refused."""
    reason = spec.ddp_refusal_reason(cfg.method)
    if reason is not None and processes is not None and processes > 1:
        raise ConfigError(f"{reason} (this evaluation has {processes} processes)")


def check_evaluation(cfg: ExperimentConfig, spec: MethodSpec) -> None:
    """What is refused from the config alone, before any model, data or run folder: an evaluation protocol
    or a protocol on a target the method does not implement, a multi-process evaluation that would not
    equal one process."""
    check_protocol(cfg, spec)
    method_protocols(cfg, spec)
    refuse_inexact_ddp(cfg, spec, planned_processes(cfg))


def target_datamodules(cfg: ExperimentConfig, spec: MethodSpec) -> list[AnomalyDataModule]:
    if not cfg.targets:
        raise ConfigError(
            "no targets to evaluate: set defaults.targets in the experiment or targets=[NAME,...]"
        )
    return [method_datamodule(cfg, spec, target) for target in cfg.targets]


class _WriteResults(Callback):
    """Writes one target's results from inside the global-rank-0 process (works for every strategy,
    ``ddp_spawn`` included, where the launching process never sees the module's state)."""

    def __init__(
        self,
        job: Job,
        results: dict[str, Any],
        key: str,
        target: Any,
        protocol: dict[str, Any] | None,
        draw: int | None = None,
    ) -> None:
        self.run_dir, self.loggers = job.run_dir, job.loggers
        self.results, self.key, self.target, self.protocol = results, key, target, protocol
        self.draw = draw  # the few-shot reference draw evaluated; None: zero-shot

    def on_test_end(self, trainer: L.Trainer, module: ZeroShotModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        index = datamodule.test_index
        details = {
            "root": str(index.root),
            "version": index.version,
            "split": self.target.test_split,
            "image_size": datamodule.image_size,
            # masks (and maps) at each file's own resolution (AnomalyDINO's authors' setting): no one size
            "eval_size": "original"
            if datamodule.preprocessing.mask_size == "original"
            else datamodule.eval_size,
            "preprocessing": dataclasses.asdict(datamodule.preprocessing),
            "options": dict(datamodule.cfg.options or {}),
            "n_images": len(index.records),
            "data_fingerprint": datamodule.test_fingerprint_summary,  # which images these numbers saw
            **({"method_protocol": self.protocol} if self.protocol is not None else {}),
        }
        thresholds = f1_thresholds(module.test_curves) if module.test_curves is not None else None
        payload = target_payload(self.target.name, index.counts(), module.test_results, details, thresholds)
        record_result(self.results, self.draw, self.key, payload)
        write_results(self.run_dir, self.results)
        if self.draw is not None:  # the draw's numbers, then the mean over the draws so far
            log_evaluation(self.loggers, f"{self.key}/draw{self.draw}", payload)
        log_evaluation(self.loggers, self.key, self.results["targets"][self.key])


def evaluate(
    cfg: ExperimentConfig,
    spec: MethodSpec,
    module: ZeroShotModule,
    job: Job,
    results: dict[str, Any],
    datamodules: list[AnomalyDataModule],
    plan: dict[str, list[ReferenceDraw]] | None = None,
) -> dict[str, Any]:
    """Test on every target, telling the module the method's protocol there; the results files are
    rewritten after each one. Few-shot (``plan``: per target its reference draws): every target once per
    draw, the module handed the draw's references first; (draw, target) pairs a preempted session finished
    are skipped; a draw's maps and pictures go to ``RUN/draws/{draw}/``."""
    run_dir, loggers = job.run_dir, job.loggers
    module.run_dir = run_dir
    targets = list(zip(_target_keys(cfg), cfg.targets, datamodules, method_protocols(cfg, spec), strict=True))
    for draw in range(cfg.protocol.draws) if plan is not None else [None]:
        outputs = run_dir if draw is None else run_dir / "draws" / str(draw)
        for key, target, datamodule, protocol in targets:
            if finished(results, draw, key):
                continue
            callbacks: list[Callback] = [_WriteResults(job, results, key, target, protocol, draw)]
            if cfg.eval.save_maps:
                callbacks.append(MapWriter(outputs / "maps" / key))
            if cfg.eval.visualize:
                callbacks.append(
                    EvaluationPictures(
                        outputs / "plots" / key,
                        key if draw is None else f"{key}/draw{draw}",
                        loggers,
                        cfg.eval.gallery_size,
                        cfg.eval.fpr_limit,
                        run_label=f"{cfg.method.name} ({run_dir.name})",
                    )
                )
            trainer = make_trainer(
                cfg,
                run_dir,
                loggers,
                training=False,
                inference_mode=not spec.needs_grad_at_test(cfg.method),
                callbacks=callbacks,
            )
            refuse_inexact_ddp(cfg, spec, trainer.world_size)  # devices=auto: known once Lightning decided
            module.method_protocol = protocol
            module.references = None if draw is None else datamodule.reference_images(plan[key][draw])
            with stop_signals.under_trainer(trainer):  # its batch ends decide (pipelines.stop_signals)
                trainer.test(module, datamodule=datamodule, verbose=False)
            if (run_dir / "results.json").is_file():  # written by rank 0, possibly in another process
                results = json.loads((run_dir / "results.json").read_text())
    module.references = None
    return results


def _target_keys(cfg: ExperimentConfig) -> list[str]:
    """Unique result keys: the dataset name, or name@root-folder when a dataset appears twice."""
    names = [t.name for t in cfg.targets]
    return [
        n if names.count(n) == 1 else f"{n}@{Path(t.root).name}"
        for n, t in zip(names, cfg.targets, strict=True)
    ]


def _source_record(source: DataConfig) -> dict[str, Any]:
    """What results.json says of one training source; a few-shot training set adds its draw's settings (its
    files are in the checkpoint's fingerprint)."""
    record: dict[str, Any] = {"dataset": source.name, "root": source.root, "split": source.train_split}
    if source.train_shots is not None:
        record.update(train_shots=source.train_shots, train_shots_seed=source.train_shots_seed)
    return record


def _results_header(cfg: ExperimentConfig, run_dir: Path, checkpoint: Path | None) -> dict[str, Any]:
    return {
        "experiment": cfg.name,
        "method": cfg.method.name,
        "source": source_label(cfg),  # "mvtec", or "mvtec+colondb" for several sources
        "sources": [_source_record(s) for s in source_configs(cfg)],
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint) if checkpoint else None,
        # source_data and trained_setting: what the weights were trained on, and how
        **checkpoint_record(checkpoint),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "eval": dataclasses.asdict(cfg.eval),
        "targets": {},
    }


def _evaluation_header(
    cfg: ExperimentConfig, job: Job, checkpoint: Path | None, plan: dict[str, list[ReferenceDraw]] | None
) -> dict[str, Any]:
    """results.json's header with the protocol (and a few-shot run's draws: references, results a preempted
    session finished); the draws' reference files also go into the W&B config."""
    header = {**_results_header(cfg, job.run_dir, checkpoint), **protocol_header(cfg, plan)}
    if plan is not None and global_rank() == 0:
        log_references(job.loggers, plan)
    return resumed_draws(job.run_dir, header)


def refuse_checkpoint(cfg: ExperimentConfig, command: str) -> None:
    """``checkpoint=`` names weights to evaluate (`zsad test`); `zsad train` and `zsad run` train their own and
    would ignore it (its numbers filed under that checkpoint in config.yaml, and zsad report would make the fresh
    weights its replicate): refused in one line."""
    if cfg.checkpoint:
        raise ConfigError(
            f"`zsad {command}` trains its own weights and would ignore checkpoint={cfg.checkpoint}: evaluate "
            "those weights with `zsad test CONFIG checkpoint=...`, or drop checkpoint= to train"
        )


# --- jobs --------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig) -> RunOutcome:
    spec = get_method(cfg.method.name)
    refuse_checkpoint(cfg, "train")
    if not spec.trains:  # before any run folder or model exists
        raise ConfigError(
            f"method '{spec.name}' is training-free: evaluate it with `zsad run` or `zsad test` (no checkpoint)"
        )
    with stop_signal_guard():
        module = build_module(cfg, spec)
        return run_job(cfg, "train", lambda job: RunOutcome(job.run_dir, fit(cfg, spec, module, job)))


def evaluation_module(cfg: ExperimentConfig, spec: MethodSpec) -> tuple[ZeroShotModule, Path | None]:
    """The configured method with its trained weights (``checkpoint=``, required for trained methods): a
    zsad checkpoint, or the authors' released weights for a method whose spec reads them. An unusable
    checkpoint is refused before the model is built."""
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else None
    if spec.trains and checkpoint is None:
        raise ConfigError(
            f"method '{spec.name}' is trained: pass checkpoint=RUN_DIR/checkpoints/last.ckpt (written by `zsad train`)"
        )
    if checkpoint is None:
        return build_module(cfg, spec), None
    weights = read_trained_checkpoint(checkpoint, cfg.method.name)
    refuse_other_training_source(checkpoint, weights, source_configs(cfg))
    module = build_module(cfg, spec)
    module.load_trained_weights(str(checkpoint), spec.official_checkpoint, weights)
    return module, checkpoint


def test(cfg: ExperimentConfig) -> RunOutcome:
    spec = get_method(cfg.method.name)
    check_evaluation(cfg, spec)  # a refused target or DDP evaluation stops the job before anything is built
    with stop_signal_guard():
        datamodules = target_datamodules(cfg, spec)
        plan = reference_plan(cfg, _target_keys(cfg), datamodules)  # refused: before model or run folder
        for line in skipped_references(plan):
            rank_zero_info(line)
        module, checkpoint = evaluation_module(cfg, spec)

        def body(job: Job) -> RunOutcome:
            header = _evaluation_header(cfg, job, checkpoint, plan)
            results = evaluate(cfg, spec, module, job, header, datamodules, plan)
            return RunOutcome(job.run_dir, checkpoint, results)

        return run_job(cfg, "eval", body)


def run(cfg: ExperimentConfig) -> RunOutcome:
    """Train on the source (its test split, by the zero-shot protocol), then evaluate every target."""
    spec = get_method(cfg.method.name)
    refuse_checkpoint(cfg, "run")
    check_evaluation(cfg, spec)  # a refused target or DDP evaluation stops the job before any training
    with stop_signal_guard():
        datamodules = target_datamodules(cfg, spec)  # a wrong target root fails before training
        plan = reference_plan(cfg, _target_keys(cfg), datamodules)  # refused: before model or run folder
        for line in skipped_references(plan):
            rank_zero_info(line)
        module = build_module(cfg, spec)

        def body(job: Job) -> RunOutcome:
            checkpoint = fit(cfg, spec, module, job) if spec.trains else None
            header = _evaluation_header(cfg, job, checkpoint, plan)
            results = evaluate(cfg, spec, module, job, header, datamodules, plan)
            return RunOutcome(job.run_dir, checkpoint, results)

        return run_job(cfg, "run", body)
