"""SLURM for sweeps: the ``slurm`` block of a sweep, the array script it renders, and the queue.

Every value that reaches the sbatch script is checked against SLURM's own syntax here (or quoted as one
shell word), so a config value can never add a line to the script; ``setup`` lines are the one place
where a sweep file runs shell code, by design (``module load ...``): they are trusted like the sweep file
itself, one command per entry.

The queue is read with ``scontrol show job`` (state and restart count of every array task; works without
SLURM accounting, which many small clusters do not run).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import string
import subprocess
from collections.abc import Sequence
from pathlib import Path

from datamodules.errors import ConfigError

TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "sweep.sbatch"
MAX_SIGNAL_SECONDS = 65535  # sbatch --signal=SIG@TIME takes at most this


@dataclasses.dataclass
class SlurmConfig:
    partition: str | None = None  # one name or a comma-separated list
    account: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1  # also the number of tasks (DDP ranks) per node; 0 runs on CPU
    cpus_per_task: int = 8
    mem: str | None = None  # per node, SLURM units: "64G", "500M", "0" (all of it)
    time: str = "08:00:00"  # SLURM time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (quote it in YAML)
    max_concurrent: int = 8  # the %N of --array
    signal_seconds: int = 90  # SIGUSR1 this long before the time limit -> checkpoint + requeue
    extra_sbatch: list[str] = dataclasses.field(default_factory=list)  # "--flag=value" or "--flag"
    setup: list[str] = dataclasses.field(default_factory=list)  # trusted shell, one command per entry


# --- SLURM's syntax ------------------------------------------------------------------------------------
_NAME = r"[A-Za-z0-9_.+-]+"
_SYNTAX = {
    "partition": (re.compile(rf"{_NAME}(,{_NAME})*"), "a partition name or a comma-separated list, e.g. gpu"),
    "account": (re.compile(_NAME), "an account name (letters, digits, _ . + -)"),
    "mem": (re.compile(r"\d+[KMGTkmgt]?"), "a size with an optional unit K, M, G or T, e.g. 64G"),
    "time": (
        re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|(?i:unlimited|infinite)"),
        "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (quoted in YAML), e.g. '12:00:00'",
    ),
}
_EXTRA_SBATCH = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:/%@+=-]+)?")
# Options the script sets itself from the slurm block (or that would break the array's bookkeeping).
_MANAGED = {
    "array": "the runs", "job-name": "the sweep name", "output": "the sweep folder", "error": "the sweep folder",
    "open-mode": "append", "requeue": "always on", "no-requeue": "requeue is needed to resume",
    "signal": "slurm.signal_seconds", "nodes": "slurm.nodes", "ntasks-per-node": "slurm.gpus_per_node",
    "ntasks": "slurm.nodes x slurm.gpus_per_node", "cpus-per-task": "slurm.cpus_per_task",
    "time": "slurm.time", "partition": "slurm.partition", "account": "slurm.account", "mem": "slurm.mem",
    "gpus-per-node": "slurm.gpus_per_node", "wrap": "the script",
}  # fmt: skip
# What sbatch reads as one word of an ``#SBATCH`` line (no quoting there) and a SLURM file name pattern
# leaves alone (``%`` would be expanded).
_SBATCH_PATH = re.compile(r"[A-Za-z0-9_.,/+=@:~-]+")


def check_slurm(s: SlurmConfig) -> None:
    """Raise :class:`ConfigError` for the first value SLURM would not accept (or that could inject)."""
    for key, (pattern, accepted) in _SYNTAX.items():
        value = getattr(s, key)
        if value is not None and not pattern.fullmatch(str(value)):
            raise ConfigError(f"slurm.{key}: {str(value)!r} is not valid; expected {accepted}")
    for key, low, high in (
        ("nodes", 1, None),
        ("gpus_per_node", 0, None),
        ("cpus_per_task", 1, None),
        ("max_concurrent", 1, None),
        ("signal_seconds", 0, MAX_SIGNAL_SECONDS),
    ):
        value = getattr(s, key)
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"slurm.{key}: {value} is not valid; expected an integer {bound}")
    for option in s.extra_sbatch:
        if not _EXTRA_SBATCH.fullmatch(option):
            raise ConfigError(
                f"slurm.extra_sbatch: {option!r} is not valid; expected '--flag' or '--flag=value' "
                "(value of letters, digits and _ . , : / % @ + = -, no spaces), e.g. --qos=high"
            )
        flag = option[2:].split("=", 1)[0]
        if flag in _MANAGED:
            raise ConfigError(f"slurm.extra_sbatch: {option!r} is set by zsad ({_MANAGED[flag]}); remove it")
    for line in s.setup:
        if any(c in line for c in "\n\r\0"):
            raise ConfigError(
                f"slurm.setup: {line!r} spans several lines; give one shell command per list entry"
            )


def check_sbatch_path(path: Path, what: str) -> None:
    """A path that goes into an ``#SBATCH`` line must be one plain word there."""
    if not _SBATCH_PATH.fullmatch(str(path)):
        raise ConfigError(
            f"{what} {str(path)!r} cannot be given to sbatch: use a path of letters, digits and _ . , / + = @ : ~ - "
            "(no spaces, quotes, % or control characters)"
        )


# --- the array script --------------------------------------------------------------------------------
def compress(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def render_script(
    s: SlurmConfig, job_name: str, manifest: Path, indices: Sequence[int], command: Sequence[str]
) -> str:
    """The array script for manifest entries ``indices``; ``command`` is the zsad CLI as an argv."""
    check_slurm(s)
    directory = manifest.parent.resolve()
    log_dir = directory / "slurm-logs"
    check_sbatch_path(log_dir, "the sweep folder")
    if not re.fullmatch(_NAME, job_name):
        raise ConfigError(f"job name {job_name!r}: use letters, digits and _ . + -")
    directives = []
    for key in ("partition", "account", "mem"):
        if getattr(s, key):
            directives.append(f"#SBATCH --{key}={getattr(s, key)}")
    if s.gpus_per_node > 0:
        directives.append(f"#SBATCH --gpus-per-node={s.gpus_per_node}")
    directives += [f"#SBATCH {option}" for option in s.extra_sbatch]
    # One process (srun task) per GPU, or per node on CPU; Lightning's SLURM detection checks that
    # trainer.devices and trainer.num_nodes match the tasks per node and the nodes (docs/cluster.md).
    trainer = [f"trainer.num_nodes={s.nodes}"]
    if s.gpus_per_node > 0:
        trainer += ["trainer.accelerator=gpu", f"trainer.devices={s.gpus_per_node}"]
    elif s.nodes > 1:
        trainer += ["trainer.accelerator=cpu", "trainer.devices=1"]
    if max(s.gpus_per_node, 1) * s.nodes > 1:
        trainer.append("trainer.strategy=ddp")
    return string.Template(TEMPLATE.read_text()).substitute(
        job_name=job_name,
        array=f"{compress(sorted(indices))}%{s.max_concurrent}",
        nodes=s.nodes,
        tasks_per_node=max(s.gpus_per_node, 1),
        cpus_per_task=s.cpus_per_task,
        time=s.time,
        log_dir=log_dir,
        signal_seconds=s.signal_seconds,
        directives="\n".join(directives),
        setup="\n".join(s.setup),
        sweep_dir=shlex.quote(str(directory)),
        command=" ".join(shlex.quote(word) for word in command),
        manifest=shlex.quote(str(manifest.resolve())),
        trainer_overrides=" ".join(trainer),
    )


# --- the queue ---------------------------------------------------------------------------------------
# JobState values of a task that will still run (or runs); every other state is final.
RUNNING_STATES = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"}
REQUEUE_STATES = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}


@dataclasses.dataclass(frozen=True)
class Task:
    """One array task as the scheduler sees it."""

    job: str  # "ARRAYJOB_TASK", as squeue and the log files name it
    state: str  # SLURM's JobState, e.g. PENDING, RUNNING, COMPLETED, FAILED
    restarts: int  # how often it was requeued
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in RUNNING_STATES or self.state in WAITING_STATES


def _expand_ids(text: str) -> list[int]:
    """``"0-2,5%2"`` -> ``[0, 1, 2, 5]`` (scontrol's ArrayTaskId of tasks not yet split off)."""
    indices = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            indices += range(int(low), int(high or low) + 1) if (high or low).isdigit() else []
    return indices


def array_tasks(job_id: str, job_name: str | None = None) -> dict[int, Task] | None:
    """Array task index -> :class:`Task` for one array job; ``{}`` when SLURM has forgotten the job (or
    the id now belongs to a job of another name), ``None`` when the scheduler cannot be asked."""
    if shutil.which("scontrol") is None:
        return None
    try:
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr else None
    tasks: dict[int, Task] = {}
    for line in proc.stdout.splitlines():
        fields = dict(
            re.findall(r"(?:^|\s)(JobName|JobState|ArrayTaskId|ArrayJobId|Restarts|Reason)=(\S*)", line)
        )
        if fields.get("ArrayJobId") != job_id or (job_name and fields.get("JobName") != job_name):
            continue
        for index in _expand_ids(fields.get("ArrayTaskId", "")):
            restarts = fields.get("Restarts", "0")
            tasks[index] = Task(
                f"{job_id}_{index}",
                fields.get("JobState", "UNKNOWN"),
                int(restarts) if restarts.isdigit() else 0,
                fields.get("Reason", ""),
            )
    return tasks
