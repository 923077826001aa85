"""What a checkpoint was trained with, for the evaluations of it (`zsad test checkpoint=`).

A zsad checkpoint carries its training run's data fingerprint and its training setting (the ``method``,
``source`` and ``trainer`` sections of the run's config; :class:`~pipelines.checkpointing.ExactResume` writes
both); an older checkpoint's setting is its run folder's ``config.yaml``. results.json records both
(``source_data``, ``trained_setting``: the report keeps test runs of differently trained checkpoints apart),
and a checkpoint is refused under a config that names another training source, which would file its numbers
under the wrong training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import ConfigError
from datamodules.fingerprint import summary as fingerprint_summary
from lightning_modules.checkpoint_io import CheckpointError, safe_torch_load
from pipelines.checkpointing import RESUME_KEY

#: The parts of a run's config that decide the weights it trains (what a `zsad test` of them records).
TRAINED_SECTIONS = ("method", "source", "trainer")


def trained_setting(config: dict[str, Any]) -> dict[str, Any]:
    """The training-deciding sections of a resolved config (as config.yaml holds it)."""
    return {key: config[key] for key in TRAINED_SECTIONS if key in config}


def _marker(checkpoint: Path, content: Any = None) -> dict[str, Any]:
    """What ExactResume wrote into ``checkpoint`` (``content``: the file already read); {} for the authors'
    weights or a file that cannot be read."""
    try:
        loaded = content if content is not None else safe_torch_load(checkpoint)
        marker = loaded.get(RESUME_KEY) or {}
    except (CheckpointError, FileNotFoundError, AttributeError):
        return {}
    return marker if isinstance(marker, dict) else {}


def checkpoint_setting(checkpoint: Path | None, content: Any = None) -> dict[str, Any] | None:
    """The training setting of a zsad checkpoint: the one it carries (ExactResume), else that of the run folder
    it lies in (``RUN/config.yaml`` beside ``RUN/checkpoints/``, older checkpoints); None for the authors'
    weights or a file outside a run folder, whose setting is unknown. ``content``: the file already read."""
    if checkpoint is None:
        return None
    marker = _marker(checkpoint, content)
    if isinstance(marker.get("setting"), dict):
        return marker["setting"]
    config = Path(checkpoint).parent.parent / "config.yaml"
    try:
        loaded = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return trained_setting(loaded) if isinstance(loaded, dict) else None


def training_data(checkpoint: Path | None, content: Any = None) -> dict[str, Any] | None:
    """The summary of the data ``checkpoint`` was trained on (what results record), None when it records
    none (an official or older checkpoint) or cannot be read."""
    if checkpoint is None:
        return None
    marker = _marker(checkpoint, content)
    return fingerprint_summary(marker["data"]) if isinstance(marker.get("data"), dict) else None


def checkpoint_record(checkpoint: Path | None) -> dict[str, Any]:
    """results.json's ``source_data`` (the fingerprint of what the weights were trained on) and
    ``trained_setting`` (how: the report keeps test runs of checkpoints trained differently apart), from one
    read of the file."""
    try:
        content = safe_torch_load(checkpoint) if checkpoint is not None else None
    except (CheckpointError, FileNotFoundError):
        content = {}
    return {
        "source_data": training_data(checkpoint, content),
        "trained_setting": checkpoint_setting(checkpoint, content),
    }


def _override(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"[{','.join(names)}]"


def refuse_other_training_source(checkpoint: Path, content: Any, sources: list[Any]) -> None:
    """Refuse to evaluate a checkpoint under a config whose training source is not the one it was trained on
    (results, run names and reports would file its numbers under the wrong training data), in one line."""
    trained = checkpoint_setting(checkpoint, content)
    node = (trained or {}).get("source")
    entries = node if isinstance(node, list) else [node] if isinstance(node, dict) else []
    theirs = [_training_set(e.get("name"), e.get("train_shots"), e.get("train_shots_seed")) for e in entries]
    ours = [
        _training_set(s.name, getattr(s, "train_shots", None), getattr(s, "train_shots_seed", 0))
        for s in sources
    ]
    if len(theirs) == len(ours):  # a checkpoint that records no draw seed (older): name and shots only
        ours = [(n, k, None if t[2] is None else d) for (n, k, d), t in zip(ours, theirs, strict=True)]
    if not theirs or not ours or theirs == ours:
        return

    def label(sets: list[tuple[Any, Any, Any]]) -> str:
        return "+".join(_training_set_label(*s) for s in sets)

    same_names = [n for n, _, _ in theirs] == [n for n, _, _ in ours]
    fix = (
        "set source.train_shots and source.train_shots_seed to match"
        if same_names
        else f"set source={_override([str(n) for n, _, _ in theirs])} to match"
    )
    raise ConfigError(
        f"{checkpoint} was trained on {label(theirs)} and this config's source is {label(ours)}: its results "
        f"would be filed under the wrong training data; evaluate it with the experiment it was trained with, "
        f"or {fix}"
    )


def _training_set_label(name: Any, shots: Any, seed: Any) -> str:
    """``mvtec``, ``mvtec (16-shot)``, ``mvtec (16-shot, train_shots_seed=3)``."""
    if not shots:
        return f"{name}"
    draw = f", train_shots_seed={seed}" if seed is not None else ""
    return f"{name} ({shots}-shot{draw})"


def _training_set(name: Any, shots: Any, seed: Any) -> tuple[Any, Any, Any]:
    """A training source as the data it trains on: its name and, for a few-shot training set, its draw
    (train_shots, train_shots_seed)."""
    return (name, shots, seed if shots else None)
