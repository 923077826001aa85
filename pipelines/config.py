"""Typed, composable experiment configs.

An experiment YAML names its parts in ``defaults`` and overrides what it needs::

    defaults:
      method: anomalyclip        # configs/method/anomalyclip.yaml
      source: mvtec              # configs/data/mvtec.yaml: trained on (its test split)
      targets: [visa, mpdd]      # evaluated on
    name: anomalyclip_mvtec_to_visa
    trainer: {max_epochs: 15}

Composition order: the dataclass schema <- configs/base.yaml <- method/data files <- the experiment body
<- command-line ``key=value`` overrides. ``method=NAME``, ``source=NAME`` and ``targets=[A,B]`` on the
command line pick other files. Unknown keys, wrong types and missing values are :class:`ConfigError`.

Several training sources (``source: [mvtec, colondb]``) compose into a list of data configs: a key set
on ``source`` in the experiment body or on the command line (``source.batch_size=1``) applies to every
source, ``source.N.key`` to the N-th; ``name`` and ``root`` only per source.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from datamodules.config import DataConfig
from datamodules.errors import ConfigError
from lightning_modules.eval_config import EvalConfig

GROUPS = ("method", "source", "targets")
# Keys that say where a run's files go or how it is shown, not what it computes: a finished run folder
# may be re-entered with other values of these (config_differences ignores them).
PLACEMENT_KEYS = ("run_dir", "output_dir", "logger", "trainer.enable_progress_bar")
# Keys an unfinished run (resume checkpoints in its folder) may be resumed with other values of: they
# change when checkpoints are written or how often metrics are logged, never a trained parameter. Anything
# else -- devices, strategy and num_nodes too (each process's share of an epoch and the rank-seeded step
# randomness depend on the number of processes), precision, num_workers -- would mix two configs' training.
# (A larger trainer.max_epochs is also accepted: run_folder.refuse_resume_of_another_config.)
RESUME_NEUTRAL_KEYS = (*PLACEMENT_KEYS, "trainer.checkpoint_minutes", "trainer.log_every_n_steps")


class MatmulPrecision(enum.Enum):
    """``torch.set_float32_matmul_precision`` levels (an Enum: any other value is a config error)."""

    highest = "highest"
    high = "high"
    medium = "medium"


@dataclasses.dataclass
class TrainerConfig:
    max_epochs: int = 15
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count ("2") or device ids ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    # How float32 matrix products run (torch.set_float32_matmul_precision), in every process: "highest" is
    # exact float32; "high" lets GPUs use TF32 tensor cores (~1e-3 relative error in products, several times
    # faster on A100/H100); "medium" allows bfloat16 products. Only 32-true uses float32 products throughout.
    float32_matmul_precision: MatmulPrecision = MatmulPrecision.highest
    log_every_n_steps: int = 10
    # Sum the gradients of this many batches before each optimizer step (memory: the activations of one
    # batch at a time). Checkpoints and stops fall on optimizer steps only, so a resume stays exact.
    accumulate_grad_batches: int = 1
    # Training saves a resume checkpoint at the end of every epoch and, within an epoch, after the first step
    # that ends this many minutes after the previous checkpoint (null: epoch ends only), so a hard kill loses
    # at most about this much work. See docs/cluster.md, "Interruptions and exact resume".
    checkpoint_minutes: float | None = 30.0
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclasses.dataclass
class ProtocolConfig:
    """How the targets are evaluated (docs/protocols.md): zero-shot (``shots: 0``), or k-shot: every
    category's ``shots`` normal training images handed to the method before its test images, the whole
    evaluation repeated for ``draws`` seeded draws of them (the replicates of a k-shot table cell)."""

    shots: int = 0  # K reference images per category; 0: zero-shot
    draws: int = 1  # few-shot: independent reference draws, each evaluated and recorded
    # few-shot: how a draw picks its references (datamodules/references.py): "random" (seeded by the experiment
    # seed, the draw and the category) or "sorted" (draw d: the category's sorted normal training files from
    # position d * shots on, the AnomalyDINO authors' selection with their seed = d) or "listed" (the files
    # named in ``references``)
    selection: str = "random"
    # selection "listed": one text file per draw naming its reference images, one path per line, as the
    # authors' code records its draws (APRIL-GAN's k_shot.txt, AdaptCLIP's *_prompts.txt): paths relative to
    # the dataset root or ending with such a path, a category's lines in their order (repeats kept)
    references: list[str] | None = None


def _protocol_label(shots: int, draws: int, method: str | None = None) -> str:
    from pipelines.protocol import protocol_label

    return protocol_label(ProtocolConfig(int(shots), int(draws)), method)


# ``${zsad_protocol:${protocol.shots},${protocol.draws},${method.name}}``: "zero-shot", "transductive" or
# "4-shot (5 draws)", for names that are interpolations (a sweep's W&B run names)
OmegaConf.register_resolver("zsad_protocol", _protocol_label, replace=True)


@dataclasses.dataclass
class WandbConfig:
    mode: str = "offline"  # offline (sync later with `wandb sync`), online, or disabled
    project: str = "zsad"
    entity: str | None = None
    # The run's display name; None: "{method} {source}->{targets} {protocol} seed={seed}". Sweeps set it from the
    # run's varied keys, `zsad train/test/run/demo` from the overrides that differ from the experiment file,
    # so that runs can be told apart on the dashboard (pipelines.loggers.label_adhoc_run).
    name: str | None = None
    group: str | None = None  # sweeps: the sweep's name; None: the experiment's name
    tags: list[str] = dataclasses.field(default_factory=list)


WANDB_TAG_LENGTH = 64  # W&B refuses longer tags


def wandb_tag(setting: str) -> str:
    """A ``key=value`` setting as a W&B tag: at most 64 characters, the value's end kept when it is cut
    (a path's file name tells more than its first folders)."""
    if len(setting) <= WANDB_TAG_LENGTH:
        return setting
    key, sep, value = setting.partition("=")
    head = f"{key}{sep}..." if sep and len(key) < WANDB_TAG_LENGTH // 2 else "..."
    return head + setting[len(setting) - (WANDB_TAG_LENGTH - len(head)) :]


@dataclasses.dataclass
class LoggerConfig:
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


@dataclasses.dataclass
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""  # one line for `zsad experiments`; every file under configs/experiment/ has one
    seed: int = 111
    data_root: str = "${oc.env:ZSAD_DATA_ROOT,/datasets}"  # configs/data/*.yaml put each dataset below it
    output_dir: str = "runs"
    run_dir: str | None = None  # default: {output_dir}/{name}/{timestamp}
    checkpoint: str | None = None  # trained weights for `zsad test`
    method: Any = MISSING  # the registered method's own config dataclass
    # Auxiliary training data (its train_split, the test split by default): one dataset, or a list of datasets
    # trained on together as one set (each with its own parser and preprocessing; docs/datasets.md).
    source: Any = None
    targets: list[DataConfig] = dataclasses.field(default_factory=list)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    protocol: ProtocolConfig = dataclasses.field(default_factory=ProtocolConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    logger: LoggerConfig = dataclasses.field(default_factory=LoggerConfig)


def config_dir() -> Path:
    """``$ZSAD_CONFIG_DIR``, else the ``configs/`` folder of this checkout."""
    return Path(os.environ.get("ZSAD_CONFIG_DIR") or Path(__file__).resolve().parents[1] / "configs")


def find_config(kind: str, name: str) -> Path:
    """A config file by path, or by name under ``configs/{kind}/``."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = config_dir() / kind / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    available = sorted(p.stem for p in (config_dir() / kind).glob("*.yaml"))
    raise ConfigError(
        f"no {kind} config '{name}'; available: {', '.join(available) or 'none'} (or give a path to a .yaml file)"
    )


def experiment_summaries() -> list[tuple[str, str]]:
    """(name, description) of every file under ``configs/experiment/``, read without composing."""
    rows = []
    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        description = _load_yaml(path).get("description") or ""
        rows.append((path.stem, " ".join(str(description).split())))
    return rows


def _load_yaml(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must contain a mapping of keys to values")
    return node


def _one_line(error: OmegaConfBaseException, where: str) -> ConfigError:
    message = str(error).splitlines()[0]
    full_key = getattr(error, "full_key", None)
    suffix = f" (key '{full_key}')" if full_key and full_key not in message else ""
    return ConfigError(f"{where}: {message}{suffix}")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``null``, numbers, ``[a,b]``, strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _group_node(kind: str, name: Any, schema: type | None) -> DictConfig:
    if not isinstance(name, str):
        raise ConfigError(f"'{kind}' must name a config file, got {name!r}")
    path = find_config(kind, name)
    body = _load_yaml(path)
    if schema is None:  # a method: its file names the registered method, whose dataclass is the schema
        from lightning_modules.registry import get_method

        method_name = body.get("name") or name
        schema = get_method(str(method_name)).config_class
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), body)
    except OmegaConfBaseException as error:
        raise _one_line(error, str(path)) from None


def compose(experiment: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Build the validated config of an experiment (a path or a name under ``configs/experiment``)."""
    path = find_config("experiment", str(experiment))
    body = _load_yaml(path)
    defaults = dict(OmegaConf.to_container(body.pop("defaults", OmegaConf.create({}))) or {})
    unknown_groups = set(defaults) - set(GROUPS)
    if unknown_groups:
        raise ConfigError(
            f"{path}: unknown entries in defaults: {sorted(unknown_groups)}; allowed: {list(GROUPS)}"
        )

    values: list[tuple[str, Any]] = []
    for text in overrides:
        key, value = parse_override(text)
        is_group_choice = key in GROUPS and (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        )
        if is_group_choice:
            defaults[key] = value
        else:
            values.append((key, value))

    cfg = OmegaConf.structured(ExperimentConfig)
    base = config_dir() / "base.yaml"
    try:
        if base.is_file():
            cfg = OmegaConf.merge(cfg, _load_yaml(base))
        if "method" not in defaults:
            raise ConfigError(f"{path}: defaults must name a method (e.g. defaults: {{method: anomalyclip}})")
        cfg.method = _group_node("method", defaults["method"], None)
        source = defaults.get("source")
        if source:
            nodes = [
                _group_node("data", s, DataConfig) for s in ([source] if isinstance(source, str) else source)
            ]
            cfg.source = nodes[0] if isinstance(source, str) else nodes
        targets = defaults.get("targets") or []
        cfg.targets = [
            _group_node("data", t, DataConfig) for t in ([targets] if isinstance(targets, str) else targets)
        ]
        if "source" in body:
            cfg.source = _merged_sources(cfg.source, body.pop("source"), str(path))
        cfg = OmegaConf.merge(cfg, body)
    except OmegaConfBaseException as error:
        raise _one_line(error, str(path)) from None

    for key, value in values:
        for target in _source_broadcast(cfg, key, value):
            try:
                OmegaConf.update(cfg, target, value, merge=True)
            except OmegaConfBaseException as error:
                raise _one_line(error, f"override '{key}={value}'") from None
    _validate(cfg, path)
    return cfg


PER_SOURCE_KEYS = ("name", "root")  # never the same for two sources


def _merged_sources(current: Any, body: Any, where: str) -> Any:
    """The composed source(s) with the experiment body's ``source`` merged in: a mapping applies to every
    source of a list, a list to the sources one by one; without a composed source the body defines it."""
    if body is None:
        return None
    as_node = lambda value: OmegaConf.merge(OmegaConf.structured(DataConfig), value)  # noqa: E731
    if isinstance(body, ListConfig):
        if current is None:
            return [as_node(item) for item in body]
        if not isinstance(current, ListConfig | list) or len(current) != len(body):
            raise ConfigError(
                f"{where}: the source list has {len(body)} entries for {_count(current)} sources"
            )
        return [OmegaConf.merge(node, item) for node, item in zip(current, body, strict=True)]
    if current is None:
        return as_node(body)
    if isinstance(current, ListConfig | list):
        per_source = sorted(set(body) & set(PER_SOURCE_KEYS))
        if per_source:
            raise ConfigError(
                f"{where}: source.{per_source[0]} cannot apply to every one of {len(current)} sources; "
                f"give a list (source: [{{...}}, {{...}}]) or source.N.{per_source[0]}"
            )
        return [OmegaConf.merge(node, body) for node in current]
    return OmegaConf.merge(current, body)


def _count(source: Any) -> int:
    return len(source) if isinstance(source, ListConfig | list) else int(source is not None)


def _source_broadcast(cfg: DictConfig, key: str, value: Any) -> list[str]:
    """The keys an override sets: ``source.K`` on a list of sources sets ``source.N.K`` for every N."""
    parts = key.split(".")
    if parts[0] != "source" or len(parts) < 2 or parts[1].isdigit() or not isinstance(cfg.source, ListConfig):
        return [key]
    if parts[1] in PER_SOURCE_KEYS:
        raise ConfigError(
            f"override '{key}={value}': {len(cfg.source)} sources have one {parts[1]} each; set source.N.{parts[1]}"
        )
    return [".".join(["source", str(i), *parts[1:]]) for i in range(len(cfg.source))]


def source_configs(cfg: Any) -> list[Any]:
    """The training source(s) of a composed config or its dataclass tree, as a list (empty: none)."""
    source = cfg.source
    if source is None:
        return []
    return list(source) if isinstance(source, ListConfig | list | tuple) else [source]


def source_label(cfg: Any) -> str | None:
    """How results name the training data: the dataset, or the datasets joined by "+" (None: no source)."""
    names = [s.name for s in source_configs(cfg)]
    return "+".join(names) if names else None


def _validate(cfg: DictConfig, path: Path) -> None:
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as error:
        raise _one_line(error, str(path)) from None
    _validate_sources(cfg, path)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{path}: missing values for {', '.join(missing)} (set them in the file or as key=value)"
        )
    _validate_name(cfg, path)


def _validate_sources(cfg: DictConfig, path: Path) -> None:
    """``source``: null, one data config or a non-empty list of them (a plain value is a ConfigError)."""
    source = cfg.source
    if source is None:
        return
    nodes = list(source) if isinstance(source, ListConfig) else [source]
    if not nodes:
        raise ConfigError(f"{path}: source is an empty list; name one or more datasets, or null for none")
    for node in nodes:
        if not isinstance(node, DictConfig) or OmegaConf.get_type(node) is not DataConfig:
            raise ConfigError(
                f"{path}: source must name a data config (source: mvtec) or a list of them, got {node!r}"
            )


def _validate_name(cfg: DictConfig, path: Path) -> None:
    """``name`` becomes a folder below ``output_dir``: it must be one path component (``run_dir`` is the
    way to put a run anywhere)."""
    name = cfg.get("name")
    if (
        not isinstance(name, str)
        or name.strip() in ("", ".", "..")
        or any(sep in name for sep in ("/", "\\", os.sep))
        or any(ord(c) < 32 for c in name)
    ):
        raise ConfigError(
            f"{path}: name {name!r} must be a plain folder name (no '/', '..' or control characters); "
            "to write a run elsewhere set run_dir=PATH"
        )


def config_differences(
    old: Any, new: Any, prefix: str = "", ignore: Sequence[str] = PLACEMENT_KEYS
) -> list[str]:
    """Dotted keys whose values differ between two plain config trees (``config.yaml`` contents), except
    ``ignore`` (and the keys below them); list items are compared position by position (``targets.0.root``)."""
    if prefix.rstrip(".") in ignore:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [d for k in keys for d in config_differences(old.get(k), new.get(k), f"{prefix}{k}.", ignore)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in config_differences(a, b, f"{prefix}{i}.", ignore)
        ]
    return [] if old == new else [prefix.rstrip(".")]


def to_object(cfg: DictConfig) -> ExperimentConfig:
    """The typed dataclass tree (``cfg.method`` becomes the method's own config dataclass)."""
    return OmegaConf.to_object(cfg)


def to_yaml(cfg: DictConfig | ExperimentConfig) -> str:
    node = cfg if isinstance(cfg, DictConfig | ListConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_yaml(node)
