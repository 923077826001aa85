"""Sweeps: a grid over config keys expanded into a manifest of runs, run locally or as a SLURM array.

A sweep YAML::

    name: mvtec_to_all
    experiment: anomalyclip_mvtec_to_all      # base experiment (a grid key may also be `experiment`)
    grid:                                     # every combination is one run; values are any YAML value
      experiment: [anomalyclip_mvtec_to_all, vand_mvtec_to_all]
      seed: [111, 222, 333]
      targets: [[visa], [mpdd, btad]]
    overrides: [trainer.max_epochs=15]        # applied to every run
    output_dir: runs/sweeps                   # the sweep folder is {output_dir}/{name}
    slurm: {partition: gpu, gpus_per_node: 1, time: "08:00:00", max_concurrent: 8}

Run ids are derived from each run's settings (not its position), so they stay stable when the grid
grows; every run has its own folder ``{sweep}/runs/{id}``, which a requeued or resubmitted task reuses.
Each submission gets its own copy of the manifest, so a task requeued after the sweep file changed still
runs the entry it was submitted for.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from datamodules.atomic_io import atomic_write_text
from datamodules.errors import ConfigError, ZsadError
from pipelines import run_state, slurm
from pipelines.slurm import SlurmConfig

MANIFEST = "manifest.json"
SUBMISSIONS = "submissions.json"
# Sweep names become a folder and part of the SLURM job name.
_SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
# Keys a sweep sets itself for every run.
_MANAGED_KEYS = ("run_dir",)


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
        """The run's own settings as W&B tags (``key=value``, at most W&B's 64 characters each)."""
        from pipelines.config import wandb_tag

        tags = [o for o in self.overrides if not o.startswith(("run_dir=", "logger.", "output_dir="))]
        return [wandb_tag(t) for t in tags]


def _refuse_unquoted_time(path: Path) -> None:
    """YAML reads an unquoted ``time: 1:30`` as the number 90 (base 60), which SLURM would take as 90
    minutes: such a time must be quoted."""
    root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    for key, value in getattr(root, "value", []) if isinstance(root, yaml.MappingNode) else []:
        if key.value == "slurm" and isinstance(value, yaml.MappingNode):
            for inner, node in value.value:
                if (
                    inner.value == "time"
                    and isinstance(node, yaml.ScalarNode)
                    and ":" in node.value
                    and node.tag.endswith((":int", ":float"))  # "08:00:00" stays a string
                ):
                    raise ConfigError(
                        f'{path}: slurm.time: {node.value} must be quoted (time: "{node.value}"): '
                        "unquoted, YAML reads it as a number in base 60"
                    )


def load_sweep(path: str | Path) -> tuple[SweepConfig, Path]:
    path = Path(path)
    if not path.is_file():
        from pipelines.config import config_dir

        candidate = config_dir() / "sweep" / f"{path}.yaml"
        if not candidate.is_file():
            raise ConfigError(f"no sweep file '{path}' (give a path or a name under configs/sweep/)")
        path = candidate
    try:
        _refuse_unquoted_time(path)
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path)))
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {str(error).splitlines()[0]}") from None
    if not _SWEEP_NAME.fullmatch(cfg.name) or ".." in cfg.name:
        raise ConfigError(
            f"{path}: name {cfg.name!r} is not a valid sweep name (it names the folder {{output_dir}}/{{name}}): "
            "use letters, digits and _ . + - (no '/' or '..')"
        )
    if (
        not cfg.experiment
        and "experiment" not in cfg.grid
        and not all("experiment" in v for v in cfg.variants or [{}])
    ):
        raise ConfigError(
            f"{path}: set 'experiment' (the base experiment config), or give it in the grid or every variant"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in cfg.output_dir):
        raise ConfigError(f"{path}: output_dir {cfg.output_dir!r} contains control characters (a newline?)")
    empty = [k for k, v in cfg.grid.items() if not v]
    if empty:
        raise ConfigError(f"{path}: grid entries without values: {empty}")
    managed = [k for k in [*cfg.grid, *(k for v in cfg.variants for k in v)] if k in _MANAGED_KEYS]
    managed += [o for o in cfg.overrides if o.partition("=")[0].strip() in _MANAGED_KEYS]
    if managed:
        raise ConfigError(f"{path}: {managed[0]!r}: the sweep sets run_dir itself ({{sweep}}/runs/{{id}})")
    try:
        slurm.check_slurm(cfg.slurm)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return cfg, path


def sweep_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def job_name(cfg: SweepConfig) -> str:
    """The SLURM job name of the sweep's arrays (also how its jobs are told from reused job ids)."""
    return f"zsad-{cfg.name}"


def override_value(value: Any) -> str:
    """A value in the override syntax (YAML flow): ``[[visa], [mpdd]]``, ``{a: 1}``, ``'1'`` for the
    string "1"; reading it back (``parse_override``) gives the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    return text.removesuffix("\n...\n").rstrip("\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60]


def _display_name(choice: dict[str, Any], varies_experiment: bool) -> str:
    """``anomalyclip zero-shot gaussian_sigma=2.0 seed=1``: method, experiment and protocol (``4-shot (5
    draws)``) come from the composed config."""
    varied = [
        f"{k.rsplit('.', 1)[-1]}={override_value(v)}"
        for k, v in choice.items()
        if k not in ("seed", "method") and not k.startswith("protocol.")
    ]
    protocol = "${zsad_protocol:${protocol.shots},${protocol.draws}}"
    parts = ["${method.name}", *(["${name}"] if varies_experiment else []), protocol, *varied, "seed=${seed}"]
    return " ".join(parts)


def expand(cfg: SweepConfig) -> list[PlannedRun]:
    """Every grid combination as a run with a stable id."""
    keys = list(cfg.grid)
    varies_experiment = "experiment" in cfg.grid or any("experiment" in v for v in cfg.variants)
    runs = []
    root = sweep_dir(cfg).resolve() / "runs"
    combinations = itertools.product(cfg.variants or [{}], itertools.product(*(cfg.grid[k] for k in keys)))
    for variant, values in combinations:
        choice = {**variant, **dict(zip(keys, values, strict=True))}
        experiment = str(choice.pop("experiment", cfg.experiment))
        overrides = [*cfg.overrides, *(f"{k}={override_value(v)}" for k, v in choice.items())]
        digest = hashlib.sha1(json.dumps([experiment, overrides]).encode()).hexdigest()[:8]
        readable = "_".join(_slug(f"{k.rsplit('.', 1)[-1]}-{override_value(v)}") for k, v in choice.items())
        experiment_part = _slug(Path(experiment).stem) if varies_experiment else ""
        run_id = "_".join(p for p in (experiment_part, readable, digest) if p)
        run_dir = sweep_dir(cfg) / "runs" / run_id
        if run_dir.resolve().parent != root:  # ids are slugs; this only guards the invariant
            raise ConfigError(f"sweep '{cfg.name}': run id {run_id!r} would leave {root}")
        name = _display_name(choice, varies_experiment)
        runs.append(PlannedRun(run_id, experiment, [*overrides, f"run_dir={run_dir}"], str(run_dir), name))
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep '{cfg.name}' has duplicate runs (the same settings twice)")
    return runs


def _run_overrides(sweep_name: str, run: PlannedRun) -> list[str]:
    """The run's overrides plus its W&B group, tags and display name."""
    wandb = [
        f"logger.wandb.group={override_value(sweep_name)}",
        f"logger.wandb.tags={override_value(run.tags)}",
    ]
    if run.display_name:
        wandb.append(f"logger.wandb.name={override_value(run.display_name)}")
    return [*run.overrides, *wandb]


def invalid_runs(cfg: SweepConfig, runs: list[PlannedRun]) -> list[tuple[PlannedRun, str]]:
    """Every run whose composed config is not valid, with the reason (composed exactly as the run will be)."""
    from pipelines.config import compose, to_object

    invalid = []
    for run in runs:
        try:
            to_object(compose(run.experiment, _run_overrides(cfg.name, run)))
        except ZsadError as error:
            invalid.append((run, str(error).splitlines()[0] if str(error) else type(error).__name__))
        except (OmegaConfBaseException, ValueError, TypeError) as error:  # raised by a config's checks
            invalid.append((run, f"{type(error).__name__}: {str(error).splitlines()[0]}"))
    return invalid


def check_runs(cfg: SweepConfig, runs: list[PlannedRun]) -> None:
    invalid = invalid_runs(cfg, runs)
    if invalid:
        details = "; ".join(f"run {run.id}: {error}" for run, error in invalid)
        raise ConfigError(f"sweep '{cfg.name}': {len(invalid)} of {len(runs)} runs are invalid: {details}")


def write_manifest(cfg: SweepConfig, source: Path, runs: list[PlannedRun], name: str = MANIFEST) -> Path:
    """The manifest each array task reads; the runs' configs are validated before anything is written."""
    check_runs(cfg, runs)
    directory = sweep_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "sweep": cfg.name,
        "source": str(source.resolve()),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": [dataclasses.asdict(r) for r in runs],
    }
    path = directory / name
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
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
    from pipelines.stop_signals import TrainingInterrupted

    try:
        return runner.run(to_object(compose(run.experiment, [*_run_overrides(sweep_name, run), *extra])))
    except TrainingInterrupted:
        raise  # status.json says interrupted or preempted; it resumes, it did not fail
    except Exception as error:
        if (
            run_state.read_status(Path(run.run_dir)).get("state") != "failed"
        ):  # failed before the run folder existed
            run_state.record_failure(Path(run.run_dir), error)
        raise


def run_local(cfg: SweepConfig, source: Path) -> dict[str, str]:
    """Execute every unfinished run in this process, one after another; failures do not stop the rest,
    a stop signal does (the interrupted run resumes when the sweep runs again)."""
    from pipelines.run_state import is_finished
    from pipelines.stop_signals import TrainingInterrupted

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
        except TrainingInterrupted:
            raise
        except Exception as error:  # noqa: BLE001 - recorded in the run's status.json, reported below
            outcome[run.id] = f"failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return outcome


# --- status -------------------------------------------------------------------------------------------
def _owner_alive(run_dir: Path, status: dict[str, Any]) -> bool:
    """Whether the process that owns a run folder (its ``run.lock``, else the pid in its status) may
    still be at work: False only when it is known to be gone (see ``run_state.lock_is_stale``)."""
    owner = run_state.read_lock(run_dir) or status
    return not run_state.lock_is_stale(owner)


def submissions(directory: Path) -> list[dict[str, Any]]:
    path = directory / SUBMISSIONS
    return json.loads(path.read_text()) if path.is_file() else []


def scheduler_view(cfg: SweepConfig, runs: list[PlannedRun]) -> dict[str, list[slurm.Task]] | None:
    """Run id -> its task in every submission that included it, newest first (``GONE`` once SLURM forgot
    the job); None when the scheduler cannot be asked."""
    included: dict[str, list[tuple[str, int]]] = {}
    for entry in submissions(sweep_dir(cfg)):  # oldest first
        ids = entry.get("ids") or [runs[i].id if i < len(runs) else None for i in entry["indices"]]
        for index, run_id in zip(entry["indices"], ids, strict=True):
            if run_id:
                included.setdefault(run_id, []).insert(0, (entry["job_id"], index))
    arrays: dict[str, dict[int, slurm.Task]] = {}
    for job_id in sorted({job for pairs in included.values() for job, _ in pairs}):
        tasks = slurm.array_tasks(job_id, job_name(cfg))
        if tasks is None:
            return None
        arrays[job_id] = tasks
    return {
        run_id: [arrays[job].get(index) or slurm.Task(f"{job}_{index}", "GONE", 0) for job, index in pairs]
        for run_id, pairs in included.items()
    }


def current_task(tasks: list[slurm.Task], file: dict[str, Any]) -> slurm.Task | None:
    """The task that stands for a run (``tasks`` newest first): the one its status names (the owner of
    its folder) while it is active, else an active one, else the newest. A newer duplicate that the run
    lock refused therefore never hides the task that runs it."""
    active = [task for task in tasks if task.active]
    owner = [task for task in active if task.job == file.get("slurm_job")]
    return (owner or active or tasks or [None])[0]


def refused_duplicates(directory: Path, tasks: list[slurm.Task], current: slurm.Task | None) -> list[str]:
    """The ended tasks of a run that the run lock refused (their log says the folder was in use)."""
    refused = []
    for task in tasks:
        if task is not current and not task.active:
            summary = log_summary(directory / "slurm-logs" / f"{task.job}.out") or ""
            if " is in use by " in summary or " was just taken by " in summary:
                refused.append(task.job)
    return refused


_TRACEBACK_LAST = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def log_summary(path: Path) -> str | None:
    """The most useful line of a task's log: zsad's own error, SLURM's verdict (``*** ... CANCELLED``),
    the exception of a traceback, an srun error, else the last line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    for test in (
        lambda line: line.startswith("zsad: error:"),
        lambda line: "***" in line and ("CANCELLED" in line or "DUE TO" in line),
        _TRACEBACK_LAST.match,
        lambda line: line.startswith(("srun: error:", "slurmstepd: error:")),
    ):
        found = [line for line in lines if test(line)]
        if found:
            return found[-1]
    return lines[-1] if lines else None


def _row_state(run_dir: Path, file: dict[str, Any], task: slurm.Task | None, asked: bool) -> tuple[str, str]:
    """(state, why) of one run from its status file and its SLURM task (None: not submitted, or the
    scheduler was not asked)."""
    state = file.get("state")
    if state == "finished" and (run_dir / "results.json").is_file():
        return "finished", ""
    if task is not None and task.state in slurm.RUNNING_STATES:
        return "running", f"restart {task.restarts}" if task.restarts else ""
    if task is not None and task.state in slurm.WAITING_STATES:
        requeued = task.restarts > 0 or task.state in slurm.REQUEUE_STATES
        if requeued or (state == "preempted" and file.get("slurm_job") == task.job):
            return "preempted", f"requeued {task.restarts}x, waiting ({task.reason or task.state})"
        return "queued", task.reason if task.reason not in ("", "None") else ""
    if state in ("running", "preempted"):
        if task is None and not asked and file.get("slurm_job"):
            return state, "SLURM could not be asked: not checked"
        if task is None and _owner_alive(run_dir, file):  # not a task of this sweep: a local run
            return state, ""
        gone = f"SLURM task {task.job} ended ({task.state})" if task else "its process is gone"
        return "interrupted", f"{gone} without finishing; submitting the sweep again resumes it"
    if state == "interrupted":
        return "interrupted", file.get("error") or "stopped; submitting the sweep again resumes it"
    if state == "failed":
        return "failed", file.get("error") or "failed"
    if task is not None:  # submitted, but no status: it ended before zsad started
        return "failed", f"SLURM task {task.job} ended ({task.state}) before zsad started"
    return "pending", ""


def status(cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per run: pending (never submitted) / queued / running / preempted (requeued, waiting) /
    interrupted (its process is gone; resubmitting resumes it) / finished / failed, from the scheduler
    and the run folder together; ``error`` and ``error_file`` say why a run failed or stopped."""
    runs = expand(cfg)
    directory = sweep_dir(cfg)
    view = scheduler_view(cfg, runs)
    rows = []
    for index, run in enumerate(runs):
        run_dir = Path(run.run_dir)
        file = run_state.read_status(run_dir)
        tasks = view.get(run.id, []) if view is not None else []
        task = current_task(tasks, file)
        state, why = _row_state(run_dir, file, task, view is not None)
        duplicates = refused_duplicates(directory, tasks, task)
        if duplicates:  # a second submission of a run already owned: nothing of it ran
            note = f"duplicate task {', '.join(duplicates)} refused: the run folder was already in use"
            why = f"{why}; {note}" if why else note
        job = task.job if task else file.get("slurm_job")
        log = directory / "slurm-logs" / f"{job}.out" if job else None
        error_file = file.get("error_file") if state in ("failed", "interrupted") else None
        if state in ("failed", "interrupted") and not error_file and log is not None and log.is_file():
            error_file = str(log)
            if state == "failed" and not file.get("error"):
                why = log_summary(log) or why
        rows.append({"index": index, "id": run.id, "state": state, "error": why or None,
                     "error_file": error_file, "job": job, "run_dir": run.run_dir})  # fmt: skip
    return rows


# --- SLURM --------------------------------------------------------------------------------------------
def render_sbatch(
    cfg: SweepConfig, manifest: Path, indices: list[int], command: list[str] | None = None
) -> str:
    """The array script for manifest entries ``indices`` (``command``: the zsad CLI as an argv)."""
    return slurm.render_script(
        cfg.slurm, job_name(cfg), manifest, indices, command or [sys.executable, "-m", "pipelines.cli"]
    )


def owners(runs: list[PlannedRun], view: dict[str, list[slurm.Task]] | None) -> dict[str, str]:
    """Run id -> who trains it now: its queued or running SLURM task, or another live owner of its
    folder (e.g. a local `zsad sweep run`)."""
    busy = {run.id: task.job for run in runs for task in (view or {}).get(run.id, [])[::-1] if task.active}
    for run in runs:
        run_dir = Path(run.run_dir)
        file = run_state.read_status(run_dir)
        if run.id in busy or file.get("state") != "running":
            continue
        if _owner_alive(run_dir, file):
            owner = run_state.read_lock(run_dir) or file
            busy[run.id] = f"pid {owner.get('pid')} on {owner.get('host')}"
    return busy


def submit(cfg: SweepConfig, source: Path, dry_run: bool = False) -> dict[str, Any]:
    """Render the array script for the unfinished runs and hand it to ``sbatch``. A run is trained by
    one job at a time: runs still queued or running are left out (``busy``), and a submission of
    nothing but such runs is refused, naming their jobs. Everything is validated before anything is
    written, and submissions of one sweep take turns (a lock on its folder), so concurrent submits see
    each other's jobs and queue each run once."""
    from pipelines.run_state import is_finished

    runs = expand(cfg)
    check_runs(cfg, runs)
    directory = sweep_dir(cfg)
    render_sbatch(cfg, directory / MANIFEST, list(range(len(runs))))  # every value, before any file
    directory.mkdir(parents=True, exist_ok=True)
    with run_state.folder_guard(directory):
        unfinished = [i for i, run in enumerate(runs) if not is_finished(Path(run.run_dir))]
        busy = owners([runs[i] for i in unfinished], scheduler_view(cfg, runs))
        todo = [i for i in unfinished if runs[i].id not in busy]
        result: dict[str, Any] = {
            "runs": len(runs),
            "to_run": todo,
            "busy": busy,
            "job_id": None,
            "script": None,
        }
        if busy and not todo:
            jobs = sorted({job.split("_")[0] for job in busy.values() if not job.startswith("pid")})
            holders = ", ".join(f"{run_id} ({job})" for run_id, job in busy.items())
            cancel = f" or cancel them (scancel {' '.join(jobs)})" if jobs else ""
            raise ZsadError(
                f"sweep '{cfg.name}' is already queued or running: its {len(busy)} unfinished runs are owned by "
                f"{holders}; wait for them (zsad sweep status){cancel} before submitting again"
            )
        if not todo:
            return result
        name = _new_submission_name(directory)
        write_manifest(cfg, source, runs)
        manifest = write_manifest(cfg, source, runs, name=f"{name}.manifest.json")
        (directory / "slurm-logs").mkdir(exist_ok=True)
        script = directory / f"{name}.sbatch"
        atomic_write_text(script, render_sbatch(cfg, manifest, todo))
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
        entry = {"job_id": job_id, "indices": todo, "ids": [runs[i].id for i in todo], "script": str(script),
                 "manifest": str(manifest), "submitted": name.removeprefix("submit-")}  # fmt: skip
        atomic_write_text(
            directory / SUBMISSIONS, json.dumps([*submissions(directory), entry], indent=2) + "\n"
        )
    return result


def _new_submission_name(directory: Path) -> str:
    """``submit-STAMP`` (``-N`` added when taken), reserved by creating its script file exclusively."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in itertools.count():
        name = f"submit-{stamp}{f'-{n}' if n else ''}"
        try:
            os.close(os.open(directory / f"{name}.sbatch", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return name
    raise AssertionError("unreachable")
