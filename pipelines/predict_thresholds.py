"""Thresholds of ``zsad predict`` and why they may not fit: F1-optimal ones from an evaluation run
(``--threshold-from``), values at a false-positive rate of normal images (``--normal-dir --fpr``), and
the warnings when a run's category is not the inputs' or the normal images are too few for the rate."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.atomic_io import atomic_write_text
from datamodules.errors import ZsadError

NORMAL_THRESHOLDS_FILE = "normal_thresholds.json"


@dataclasses.dataclass
class Thresholds:
    """``score >= image`` is anomalous, ``map >= pixel`` is an anomalous pixel; None: not given."""

    image: float | None = None
    pixel: float | None = None
    source: str = "none"
    warnings: list[str] = dataclasses.field(default_factory=list)  # why they may not fit the inputs


def thresholds_from_run(run_dir: Path, category: str | None, inputs: list[Path] = ()) -> Thresholds:
    """The F1-optimal thresholds an evaluation stored in ``RUN/results.json`` for one target/category
    (``category`` may be omitted when the run evaluated exactly one), with a warning when ``inputs`` are
    not that category's images."""
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ZsadError(
            f"--threshold-from: {path} not found (pass the folder of a `zsad test` or `zsad run`)"
        ) from None
    except ValueError as error:
        raise ZsadError(f"--threshold-from: cannot read {path}: {error}") from None
    available = {
        f"{target}/{name}": values
        for target, payload in results.get("targets", {}).items()
        for name, values in payload.get("categories", {}).items()
    }
    if category is None:
        if len(available) != 1:
            raise ZsadError(
                f"--threshold-from {run_dir}: the run has {len(available)} categories; choose one with "
                f"--threshold-category, one of: {', '.join(sorted(available)) or 'none'}"
            )
        category = next(iter(available))
    if category not in available:
        raise ZsadError(
            f"--threshold-category {category} is not in {path}; available: {', '.join(sorted(available))}"
        )
    stored = available[category].get("f1_thresholds")
    if not stored:
        raise ZsadError(
            f"{path} has no F1 thresholds for {category} (written by zsad before thresholds were stored?); re-run the evaluation"
        )
    if stored.get("image") is None and stored.get("pixel") is None:
        raise ZsadError(
            f"{path}: both F1 thresholds of {category} are undefined (one class or no ground truth)"
        )
    return Thresholds(
        stored.get("image"),
        stored.get("pixel"),
        f"F1-optimal thresholds of {category} in {path}",
        other_category_warning(results, category, inputs),
    )


def fpr_threshold(normal_scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold at which at most ``fpr`` of the normal scores are flagged (``score >= t``):
    just above the ``floor(fpr * n)``-th highest normal score (0-based), so that ties never push the
    false-positive rate past ``fpr``. The step is taken in the scores' own precision (float32 maps), so
    the threshold is a value of that type and comparisons in float32 or float64 agree."""
    values = np.sort(np.asarray(normal_scores).reshape(-1))[::-1]
    k = math.floor(fpr * values.size)
    if k >= values.size:
        return float(values[-1])
    return float(np.nextafter(values[k], np.array(np.inf, dtype=values.dtype)))


def few_normals_warning(n_normal: int, fpr: float) -> list[str]:
    """An image threshold at ``fpr`` needs at least ``1 / fpr`` normal images: with fewer, no normal image
    may be flagged and the threshold is just above their highest score, whatever ``fpr`` asks for."""
    if fpr <= 0 or n_normal * fpr >= 1:
        return []
    return [
        f"--fpr {fpr:g} on {n_normal} normal images: fewer than 1/fpr = {math.ceil(1 / fpr - 1e-9)}, so the "
        "image threshold is just above their highest score (none of them flagged) and says nothing about "
        f"a false-positive rate of {fpr:g}; give at least {math.ceil(1 / fpr - 1e-9)} normal images or a larger --fpr"
    ]


def other_category_warning(results: dict[str, Any], category: str, inputs: list[Path]) -> list[str]:
    """F1-optimal thresholds fit the maps of the category they were chosen on; name the inputs that are
    not that category's images (outside the evaluated dataset's root, or in no folder of that name)."""
    target, _, name = category.partition("/")
    root_text = results["targets"][target].get("root")
    if not root_text or not inputs:
        return []
    root = Path(root_text).resolve()
    foreign = [
        path
        for path in inputs
        if not path.resolve().is_relative_to(root) or name not in path.resolve().relative_to(root).parts
    ]
    if not foreign:
        return []
    return [
        f"{len(foreign)} of {len(inputs)} inputs (e.g. {foreign[0]}) are not images of {category} "
        f"(below {root} in a folder '{name}'), whose test set chose these F1-optimal thresholds: maps of other "
        "objects or other images often span other values; check the masks and panels, or set thresholds on "
        "normal images of these objects with --normal-dir"
    ]


class NormalStatistics(Callback):
    """Image scores and maps of the normal images (``--normal-dir``); at the end every process has the
    thresholds at ``fpr`` from all processes' images, and rank 0 records them in ``out``."""

    def __init__(self, fpr: float, out: Path, source: str) -> None:
        self.fpr, self.out, self.source = fpr, out, source
        self.scores: list[np.ndarray] = []
        self.pixels: list[np.ndarray] = []
        self.thresholds: Thresholds | None = None

    def on_predict_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, *index: int
    ) -> None:
        readable = np.array([not e for e in batch["error"]], dtype=bool)
        self.scores.append(outputs["image_scores"].detach().float().cpu().numpy()[readable])
        if outputs.get("anomaly_maps") is not None:
            self.pixels.append(outputs["anomaly_maps"].detach().float().cpu().numpy()[readable].reshape(-1))

    def on_predict_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        mine = tuple(
            np.concatenate(values) if values else np.zeros(0) for values in (self.scores, self.pixels)
        )
        parts = gather_objects(mine)
        scores = np.concatenate([p[0] for p in parts])
        pixels = np.concatenate([p[1] for p in parts])
        self.thresholds = Thresholds(
            fpr_threshold(scores, self.fpr),
            fpr_threshold(pixels, self.fpr) if pixels.size else None,
            f"{self.source}: {scores.size} normal images at FPR {self.fpr:g}",
            few_normals_warning(scores.size, self.fpr),
        )
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.out / NORMAL_THRESHOLDS_FILE,
                json.dumps(dataclasses.asdict(self.thresholds), indent=2) + "\n",
            )


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every process (just ``[value]`` without DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, value)
        return gathered
    return [value]
