"""Sweeps: a grid over config keys expanded into a manifest of runs, run locally or as a SLURM array.

A sweep YAML::

    name: mvtec_to_all
    experiment: anomalyclip_mvtec_to_all      # base experiment (a grid key may also be `experiment`)
    grid:                                     # every combination is one run
      experiment: [anomalyclip_mvtec_to_all, vand_mvtec_to_all]
      seed: [111, 222, 333]
    overrides: [trainer.max_epochs=15]        # applied to every run
    output_dir: runs/sweeps                   # the sweep folder is {output_dir}/{name}
    slurm: {partition: gpu, gpus_per_node: 1, time: "08:00:00", max_concurrent: 8}

Run ids are derived from each run's settings (not its position), so they stay stable when the grid
grows; every run has its own folder ``{sweep}/runs/{id}``, which a requeued or resubmitted task reuses.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import re
import shlex
import shutil
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipelines.errors import ConfigError, ZsadError

MANIFEST = "manifest.json"
TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "sweep.sbatch"


@dataclasses.dataclass
class SlurmConfig:
    partition: str | None = None
    account: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1  # also the number of tasks (DDP ranks) per node; 0 runs on CPU
    cpus_per_task: int = 8
    mem: str | None = None  # e.g. "64G"
    time: str = "08:00:00"
    max_concurrent: int = 8  # the %N of --array
    signal_seconds: int = 90  # SIGUSR1 this long before the time limit -> checkpoint + requeue
    extra_sbatch: list[str] = dataclasses.field(default_factory=list)  # e.g. ["--qos=high"]
    setup: list[str] = dataclasses.field(default_factory=list)  # shell lines before srun (module load, ...)


@dataclasses.dataclass
class SweepConfig:
    name: str = "sweep"
    experiment: str | None = None
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    # Alternatives that are not a product, e.g. one experiment file per method; crossed with the grid.
    variants: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    overrides: list[str] = dataclasses.field(default_factory=list)
    output_dir: str = "runs/sweeps"
    slurm: SlurmConfig = dataclasses.field(default_factory=SlurmConfig)


@dataclasses.dataclass
class PlannedRun:
    id: str
    experiment: str
    overrides: list[str]
    run_dir: str
    # W&B display name: method, varied keys, seed (``${...}`` are resolved in the run's config)
    display_name: str = ""

    @property
    def tags(self) -> list[str]:
        return [o for o in self.overrides if not o.startswith(("run_dir=", "logger.", "output_dir="))]


def load_sweep(path: str | Path) -> tuple[SweepConfig, Path]:
    path = Path(path)
    if not path.is_file():
        from pipelines.config import config_dir

        candidate = config_dir() / "sweep" / f"{path}.yaml"
        if not candidate.is_file():
            raise ConfigError(f"no sweep file '{path}' (give a path or a name under configs/sweep/)")
        path = candidate
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path)))
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {str(error).splitlines()[0]}") from None
    if (
        not cfg.experiment
        and "experiment" not in cfg.grid
        and not all("experiment" in v for v in cfg.variants or [{}])
    ):
        raise ConfigError(
            f"{path}: set 'experiment' (the base experiment config), or give it in the grid or every variant"
        )
    empty = [k for k, v in cfg.grid.items() if not v]
    if empty:
        raise ConfigError(f"{path}: grid entries without values: {empty}")
    return cfg, path


def sweep_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def _format_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60]


def _display_name(choice: dict[str, Any], varies_experiment: bool) -> str:
    """``anomalyclip gaussian_sigma=2.0 seed=1``: method and experiment come from the composed config."""
    varied = [
        f"{k.rsplit('.', 1)[-1]}={_format_value(v)}" for k, v in choice.items() if k not in ("seed", "method")
    ]
    parts = ["${method.name}", *(["${name}"] if varies_experiment else []), *varied, "seed=${seed}"]
    return " ".join(parts)


def expand(cfg: SweepConfig) -> list[PlannedRun]:
    """Every grid combination as a run with a stable id."""
    keys = list(cfg.grid)
    varies_experiment = "experiment" in cfg.grid or any("experiment" in v for v in cfg.variants)
    runs = []
    combinations = itertools.product(cfg.variants or [{}], itertools.product(*(cfg.grid[k] for k in keys)))
    for variant, values in combinations:
        choice = {**variant, **dict(zip(keys, values, strict=True))}
        experiment = str(choice.pop("experiment", cfg.experiment))
        overrides = [*cfg.overrides, *(f"{k}={_format_value(v)}" for k, v in choice.items())]
        digest = hashlib.sha1(json.dumps([experiment, overrides]).encode()).hexdigest()[:8]
        readable = "_".join(_slug(f"{k.rsplit('.', 1)[-1]}-{_format_value(v)}") for k, v in choice.items())
        experiment_part = _slug(Path(experiment).stem) if varies_experiment else ""
        run_id = "_".join(p for p in (experiment_part, readable, digest) if p)
        run_dir = str(sweep_dir(cfg) / "runs" / run_id)
        name = _display_name(choice, varies_experiment)
        runs.append(PlannedRun(run_id, experiment, [*overrides, f"run_dir={run_dir}"], run_dir, name))
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep '{cfg.name}' has duplicate runs (the same settings twice)")
    return runs


def write_manifest(cfg: SweepConfig, source: Path, runs: list[PlannedRun]) -> Path:
    """The manifest each array task reads; the runs' configs are validated before anything is written."""
    from pipelines.config import compose

    for run in runs:
        try:
            compose(run.experiment, [*run.overrides, f"logger.wandb.group={cfg.name}"])
        except ZsadError as error:
            raise ConfigError(f"sweep run {run.id}: {error}") from None
    directory = sweep_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "sweep": cfg.name,
        "source": str(source.resolve()),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": [dataclasses.asdict(r) for r in runs],
    }
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(path: Path) -> tuple[str, list[PlannedRun]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ZsadError(f"no sweep manifest at {path}; run `zsad sweep plan` or `submit` first") from None
    return data["sweep"], [PlannedRun(**r) for r in data["runs"]]


# --- running ------------------------------------------------------------------------------------------
def run_entry(sweep_name: str, run: PlannedRun, extra: list[str] = ()) -> Any:
    """One manifest entry: compose its config and run it (skipped when already finished)."""
    from pipelines import run_state, runner
    from pipelines.config import compose, to_object

    wandb = [f"logger.wandb.group={sweep_name}", f"logger.wandb.tags={json.dumps(run.tags)}"]
    if run.display_name:
        wandb.append(f"logger.wandb.name={json.dumps(run.display_name)}")
    overrides = [*run.overrides, *wandb, *extra]
    try:
        return runner.run(to_object(compose(run.experiment, overrides)))
    except Exception as error:
        if (
            run_state.read_status(Path(run.run_dir)).get("state") != "failed"
        ):  # failed before the run folder existed
            run_state.record_failure(Path(run.run_dir), error)
        raise


def run_local(cfg: SweepConfig, source: Path) -> dict[str, str]:
    """Execute every unfinished run in this process, one after another; failures do not stop the rest."""
    from pipelines.run_state import is_finished

    runs = expand(cfg)
    write_manifest(cfg, source, runs)
    outcome: dict[str, str] = {}
    for run in runs:
        if is_finished(Path(run.run_dir)):
            outcome[run.id] = "skipped (finished)"
            continue
        try:
            run_entry(cfg.name, run)
            outcome[run.id] = "finished"
        except Exception as error:  # noqa: BLE001 - recorded in the run's status.json, reported below
            outcome[run.id] = f"failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return outcome


# --- status -------------------------------------------------------------------------------------------
def _queued_tasks(job_ids: list[str]) -> dict[int, str] | None:
    """Array task index -> SLURM state for the sweep's jobs still known to squeue (None: not asked)."""
    if not job_ids or shutil.which("squeue") is None:
        return None
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%K %T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return None
    out = proc.stdout
    states = {}
    for line in out.split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            states[int(parts[0])] = parts[1].lower()
    return states


def submissions(directory: Path) -> list[dict[str, Any]]:
    path = directory / "submissions.json"
    return json.loads(path.read_text()) if path.is_file() else []


def status(cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per run: pending / queued / running / preempted / interrupted / finished / failed (with
    the error). ``interrupted``: the SLURM task is gone without finishing; resubmitting resumes it."""
    from pipelines.run_state import read_status

    runs = expand(cfg)
    directory = sweep_dir(cfg)
    history = submissions(directory)
    queued = _queued_tasks([s["job_id"] for s in history])
    last_job = {i: s["job_id"] for s in history for i in s["indices"]}  # the newest submission wins
    rows = []
    for index, run in enumerate(runs):
        state = read_status(Path(run.run_dir))
        name, error = state.get("state", "pending"), state.get("error")
        slurm_state = queued.get(index) if queued is not None else None
        if name in ("pending", "failed", "preempted") and slurm_state in (
            "pending",
            "configuring",
            "requeued",
        ):
            name = "queued"
        elif (
            queued is not None
            and slurm_state is None
            and index in last_job
            and name in ("pending", "running", "preempted")
        ):
            # the array task is gone without finishing: it died before zsad started, or was killed
            log = directory / "slurm-logs" / f"{last_job[index]}_{index}.out"
            lines = (
                [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
                if log.is_file()
                else []
            )
            name = "failed" if name == "pending" else "interrupted"
            ours = [line for line in lines if line.startswith("zsad: error:")]
            error = (
                error
                or (ours or lines or [f"SLURM task {last_job[index]}_{index} ended without a status"])[-1]
            )
        rows.append({"index": index, "id": run.id, "state": name, "error": error, "run_dir": run.run_dir})
    return rows


# --- SLURM --------------------------------------------------------------------------------------------
def _compress(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def render_sbatch(cfg: SweepConfig, manifest: Path, indices: list[int], command: str | None = None) -> str:
    s = cfg.slurm
    directives = []
    if s.partition:
        directives.append(f"#SBATCH --partition={s.partition}")
    if s.account:
        directives.append(f"#SBATCH --account={s.account}")
    if s.mem:
        directives.append(f"#SBATCH --mem={s.mem}")
    if s.gpus_per_node > 0:
        directives.append(f"#SBATCH --gpus-per-node={s.gpus_per_node}")
    directives += [f"#SBATCH {option}" for option in s.extra_sbatch]
    tasks = max(s.gpus_per_node, 1)
    trainer = [f"trainer.num_nodes={s.nodes}"]
    if s.gpus_per_node > 0:
        trainer += ["trainer.accelerator=gpu", f"trainer.devices={s.gpus_per_node}"]
        if s.gpus_per_node * s.nodes > 1:
            trainer.append("trainer.strategy=ddp")
    directory = manifest.parent.resolve()
    return string.Template(TEMPLATE.read_text()).substitute(
        sweep=cfg.name,
        array=f"{_compress(indices)}%{s.max_concurrent}",
        nodes=s.nodes,
        tasks_per_node=tasks,
        cpus_per_task=s.cpus_per_task,
        time=s.time,
        log_dir=directory / "slurm-logs",
        signal_seconds=s.signal_seconds,
        directives="\n".join(directives),
        setup="\n".join(s.setup),
        sweep_dir=shlex.quote(str(directory)),
        command=command or f"{shlex.quote(sys.executable)} -m pipelines.cli",
        manifest=shlex.quote(str(manifest.resolve())),
        trainer_overrides=" ".join(trainer),
    )


def submit(cfg: SweepConfig, source: Path, dry_run: bool = False) -> dict[str, Any]:
    """Render the array script for the unfinished runs and hand it to ``sbatch``."""
    from pipelines.run_state import is_finished

    runs = expand(cfg)
    manifest = write_manifest(cfg, source, runs)
    todo = [i for i, run in enumerate(runs) if not is_finished(Path(run.run_dir))]
    result: dict[str, Any] = {"runs": len(runs), "to_run": todo, "job_id": None, "script": None}
    if not todo:
        return result
    directory = manifest.parent
    (directory / "slurm-logs").mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    script = directory / f"submit-{stamp}.sbatch"
    script.write_text(render_sbatch(cfg, manifest, todo))
    result["script"] = str(script)
    if dry_run:
        return result
    if shutil.which("sbatch") is None:
        raise ZsadError(
            f"sbatch not found: is this a SLURM login node? The script is at {script}; or use `zsad sweep run --local`"
        )
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ZsadError(f"sbatch failed: {proc.stderr.strip() or proc.stdout.strip()} (script: {script})")
    job_id = proc.stdout.strip().split(";")[0]
    result["job_id"] = job_id
    history = submissions(directory) + [
        {"job_id": job_id, "indices": todo, "script": str(script), "submitted": stamp}
    ]
    (directory / "submissions.json").write_text(json.dumps(history, indent=2) + "\n")
    return result
