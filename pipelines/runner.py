"""The three jobs: train on a source, test on targets, or run both (the zero-shot protocol).

Cluster behaviour lives here too: every process of a DDP job agrees on one run directory, a run that
was preempted resumes from its newest checkpoint in that directory with the same W&B run id, and only
global rank 0 writes results. Which folder a run uses and whether its config may use it is
:mod:`pipelines.run_folder`; who owns it and how it stands (``run.lock``, ``status.json``),
:mod:`pipelines.run_state`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import ConfigError
from datamodules.progress import lightning_progress_bar
from lightning_modules.base import LIGHTNING_DIR, ZeroShotModule
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
    training_data,
)
from pipelines.config import (
    ExperimentConfig,
)
from pipelines.loggers import drop_redone_training_rows, log_evaluation, make_loggers, wandb_hint
from pipelines.map_writer import MapWriter
from pipelines.results import target_payload, write_results
from pipelines.run_folder import (
    RunOutcome,
    finished_run,
    prepare_run_dir,
    refuse_resume_of_another_config,
    wandb_run_id,
    write_config,
)
from pipelines.run_state import acquire_run_lock, global_rank, record_failure, write_status
from pipelines.stop_signals import TrainingInterrupted, deferred, stop_signal_guard
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
        callbacks.append(ExactResume(run_dir, cfg.seed, t.max_epochs, t.checkpoint_minutes))
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


def _datamodule(data_cfg: Any, module: ZeroShotModule, seed: int) -> AnomalyDataModule:
    datamodule = AnomalyDataModule(
        data_cfg,
        image_size=module.image_size,
        preprocessing=module.dataset_preprocessing(data_cfg.name),
        seed=seed,
        augmentation=module.train_augmentation(data_cfg.name),
    )
    _ = datamodule.full_index  # parse now: a wrong root fails before any training time is spent
    return datamodule


def fit(cfg: ExperimentConfig, module: ZeroShotModule, run_dir: Path, loggers: list[Logger]) -> Path:
    """Train on the source, resuming exactly from the run folder's newest valid checkpoint
    (:mod:`pipelines.checkpointing`); a training that already ended is not repeated: its final weights
    are loaded."""
    if cfg.source is None:
        raise ConfigError(
            "training needs a source dataset: set defaults.source in the experiment or source=NAME"
        )
    datamodule = _datamodule(cfg.source, module, cfg.seed)
    resume = find_resume_checkpoint(run_dir, warn=global_rank() == 0)
    if resume is not None and resume.complete and resume.max_epochs == cfg.trainer.max_epochs:
        module.load_trained_weights(str(resume.path))
        return resume.path
    if resume is not None:  # never one training on two datasets
        refuse_resume_on_other_data(resume, datamodule.train_fingerprint, run_dir)
    if global_rank() == 0:
        drop_redone_training_rows(loggers, resume.global_step if resume else 0)
    trainer, ckpt_path = make_trainer(cfg, run_dir, loggers, training=True), resume and str(resume.path)
    try:
        with stop_signals.under_trainer(trainer), divergence_as_one_line():  # its safe points decide
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        restore_signal_handlers(trainer)
    return last_checkpoint(run_dir)


def method_protocols(cfg: ExperimentConfig) -> list[dict[str, Any] | None]:
    """Per target, the method's protocol there as its results record it (None: the method declares none);
    a protocol the method refuses on a target raises ConfigError before any model, data or run folder."""
    protocol = get_method(cfg.method.name).dataset_protocol
    return [protocol(cfg.method, target.name) if protocol else None for target in cfg.targets]


def target_datamodules(cfg: ExperimentConfig, module: ZeroShotModule) -> list[AnomalyDataModule]:
    if not cfg.targets:
        raise ConfigError(
            "no targets to evaluate: set defaults.targets in the experiment or targets=[NAME,...]"
        )
    return [_datamodule(target, module, cfg.seed) for target in cfg.targets]


class _WriteResults(Callback):
    """Writes one target's results from inside the global-rank-0 process (works for every strategy,
    ``ddp_spawn`` included, where the launching process never sees the module's state)."""

    def __init__(
        self,
        run_dir: Path,
        results: dict[str, Any],
        key: str,
        target: Any,
        loggers: list[Logger],
        protocol: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir, self.results, self.key, self.target, self.loggers = (
            run_dir,
            results,
            key,
            target,
            loggers,
        )
        self.protocol = protocol

    def on_test_end(self, trainer: L.Trainer, module: ZeroShotModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        index = datamodule.test_index
        details = {
            "root": str(index.root),
            "version": index.version,
            "split": self.target.test_split,
            "image_size": module.image_size,
            "eval_size": datamodule.eval_size,
            "preprocessing": dataclasses.asdict(datamodule.preprocessing),
            "options": dict(datamodule.cfg.options or {}),
            "n_images": len(index.records),
            "data_fingerprint": datamodule.test_fingerprint_summary,  # which images these numbers saw
            **({"method_protocol": self.protocol} if self.protocol is not None else {}),
        }
        thresholds = f1_thresholds(module.test_curves) if module.test_curves is not None else None
        payload = target_payload(self.target.name, index.counts(), module.test_results, details, thresholds)
        self.results["targets"][self.key] = payload
        write_results(self.run_dir, self.results)
        log_evaluation(self.loggers, self.key, payload)


def evaluate(
    cfg: ExperimentConfig,
    module: ZeroShotModule,
    run_dir: Path,
    loggers: list[Logger],
    results: dict[str, Any],
    datamodules: list[AnomalyDataModule],
) -> dict[str, Any]:
    """Test on every target; the results files are rewritten after each one."""
    targets = zip(_target_keys(cfg), cfg.targets, datamodules, method_protocols(cfg), strict=True)
    for key, target, datamodule, protocol in targets:
        callbacks: list[Callback] = [_WriteResults(run_dir, results, key, target, loggers, protocol)]
        if cfg.eval.save_maps:
            callbacks.append(MapWriter(run_dir / "maps" / key))
        if cfg.eval.visualize:
            callbacks.append(
                EvaluationPictures(
                    run_dir / "plots" / key,
                    key,
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
            inference_mode=not module.needs_grad_at_test,
            callbacks=callbacks,
        )
        with stop_signals.under_trainer(trainer):  # its batch ends decide (pipelines.stop_signals)
            trainer.test(module, datamodule=datamodule, verbose=False)
        if (run_dir / "results.json").is_file():  # written by rank 0, possibly in another process
            results = json.loads((run_dir / "results.json").read_text())
    return results


def _target_keys(cfg: ExperimentConfig) -> list[str]:
    """Unique result keys: the dataset name, or name@root-folder when a dataset appears twice."""
    names = [t.name for t in cfg.targets]
    return [
        n if names.count(n) == 1 else f"{n}@{Path(t.root).name}"
        for n, t in zip(names, cfg.targets, strict=True)
    ]


def _results_header(cfg: ExperimentConfig, run_dir: Path, checkpoint: Path | None) -> dict[str, Any]:
    return {
        "experiment": cfg.name,
        "method": cfg.method.name,
        "source": cfg.source.name if cfg.source else None,
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "source_data": training_data(checkpoint),  # the fingerprint of what the weights were trained on
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "eval": dataclasses.asdict(cfg.eval),
        "targets": {},
    }


# --- jobs --------------------------------------------------------------------------------------------
def _job(cfg: ExperimentConfig, job_type: str, body) -> RunOutcome:
    """Common frame: own the run folder (its lock), skip when finished, config, status, loggers.

    Whatever ends the job (an error, a stop signal at any moment, SystemExit), status.json says how it
    ended and the lock is released; a job refused the folder (locked, or a finished or resumable run of
    another config) leaves both alone. Runs inside the caller's :func:`stop_signal_guard`.
    """
    run_dir = prepare_run_dir(cfg)
    with contextlib.ExitStack() as owned:
        with deferred():  # a signal cannot come between taking the lock and owning its release
            owned.enter_context(acquire_run_lock(run_dir))
        finished = finished_run(cfg, run_dir, job_type)
        if finished is not None:
            return finished
        refuse_resume_of_another_config(cfg, run_dir)
        loggers: list[Logger] = []
        try:
            write_config(cfg, run_dir)
            write_status(run_dir, "running")
            loggers = make_loggers(cfg, run_dir, job_type=job_type, run_id=wandb_run_id(run_dir))
            outcome = body(run_dir, loggers)
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
            outcome.notes = _notes(loggers)
    return outcome


def train(cfg: ExperimentConfig) -> RunOutcome:
    if not get_method(cfg.method.name).trains:  # before any run folder or model exists
        raise ConfigError(
            f"method '{cfg.method.name}' is training-free: evaluate it with `zsad run` or `zsad test` (no checkpoint)"
        )
    with stop_signal_guard():
        module = build_module(cfg)
        return _job(
            cfg, "train", lambda run_dir, loggers: RunOutcome(run_dir, fit(cfg, module, run_dir, loggers))
        )


def evaluation_module(cfg: ExperimentConfig) -> tuple[ZeroShotModule, Path | None]:
    """The configured method with its trained weights (``checkpoint=``, required for trained methods)."""
    spec = get_method(cfg.method.name)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else None
    if spec.trains and checkpoint is None:
        raise ConfigError(
            f"method '{spec.name}' is trained: pass checkpoint=RUN_DIR/checkpoints/last.ckpt (written by `zsad train`)"
        )
    weights = read_trained_checkpoint(checkpoint, cfg.method.name) if checkpoint is not None else None
    module = build_module(cfg)
    if checkpoint is not None:
        module.load_trained_weights(str(checkpoint), weights)
    return module, checkpoint


def test(cfg: ExperimentConfig) -> RunOutcome:
    method_protocols(cfg)  # a refused target stops the job before anything is built
    with stop_signal_guard():
        module, checkpoint = evaluation_module(cfg)
        datamodules = target_datamodules(cfg, module)

        def body(run_dir: Path, loggers: list[Logger]) -> RunOutcome:
            results = evaluate(
                cfg, module, run_dir, loggers, _results_header(cfg, run_dir, checkpoint), datamodules
            )
            return RunOutcome(run_dir, checkpoint, results)

        return _job(cfg, "eval", body)


def run(cfg: ExperimentConfig) -> RunOutcome:
    """Train on the source (its test split, by the zero-shot protocol), then evaluate every target."""
    method_protocols(cfg)  # a refused target stops the job before any training
    with stop_signal_guard():
        module = build_module(cfg)
        datamodules = target_datamodules(cfg, module)  # a wrong target root fails before training
        trains = get_method(cfg.method.name).trains

        def body(run_dir: Path, loggers: list[Logger]) -> RunOutcome:
            checkpoint = fit(cfg, module, run_dir, loggers) if trains else None
            results = evaluate(
                cfg, module, run_dir, loggers, _results_header(cfg, run_dir, checkpoint), datamodules
            )
            return RunOutcome(run_dir, checkpoint, results)

        return _job(cfg, "run", body)


def _notes(loggers: list[Logger]) -> list[str]:
    hint = wandb_hint(loggers)
    for logger in loggers:
        logger.finalize("success")
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()  # W&B: close the run so the next one in this process starts clean
    return [hint] if hint else []
