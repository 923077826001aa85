"""``zsad report --bootstrap N`` and ``--compare A B``: how much of a number, and of a difference between two
settings, is the luck of the test images.

Each category's test images are resampled with replacement, normal and anomalous images separately (a
stratified bootstrap), and every metric is recomputed exactly on each resample from the maps the run saved
(``eval.save_maps=true``: ``RUN/maps/{target}/`` holds each image's map, the mask it was scored against and
the image scores), by :mod:`lightning_modules.metrics.bootstrap`. The draws depend only on ``--seed``, the
category and its list of images (normal images that several categories hold, MVTec LOCO's good images in
both rows of their object, on those files alone: the rows resample them alike, :func:`category_weights`),
so every run that evaluated the same images gets the same resamples: a
cell's value in a resample is the mean over its replicates (and, for a dataset, over its categories) of
their metrics on the same images, and the difference of two settings is paired image by image.
Intervals are percentile intervals (95% unless ``--confidence`` says otherwise) of those resampled values; the comparison's p-value is the
two-sided percentile-bootstrap one (twice the share of resampled differences on the far side of 0).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datamodules.errors import ConfigError, ZsadError
from lightning_modules.metrics.bootstrap import RESAMPLED_METRICS, ResampledCategory, stratified_weights
from pipelines.map_writer import IMAGE_SCORES_FILE, MASK_SUFFIX
from pipelines.report_tables import Intervals

if TYPE_CHECKING:
    from pipelines.report_grouping import Cell, Entry, Grouping

CONFIDENCE = 0.95  # --confidence's default: the level of the percentile intervals
#: A point estimate from the saved maps may differ from results.json by float rounding, not more.
_SAME = 1e-9


@dataclasses.dataclass
class CategoryDraws:
    """One run's metrics of one category on every resample (metric -> values, NaN where undefined)."""

    images: tuple[tuple[str, int], ...]  # (image, label) in the order the draws index
    values: dict[str, np.ndarray]


@dataclasses.dataclass
class Comparison:
    dataset: str
    metric: str
    a: float
    b: float
    difference: float
    interval: tuple[float, float]
    p_value: float


@dataclasses.dataclass
class Bootstrap:
    n_resamples: int
    seed: int
    confidence: float  # the intervals' level (0.95: the 2.5th and 97.5th percentiles)
    intervals: Intervals
    draws: dict[tuple[str, str], dict[str | None, dict[str, np.ndarray]]]  # (row, column) -> cell draws
    images: dict[tuple[str, str], dict[str, set[tuple[tuple[str, int], ...]]]]  # cell -> category -> lists
    notes: list[str]


def _generator(seed: int, category: str, images: tuple[tuple[str, int], ...]) -> np.random.Generator:
    """The same draws for every run that evaluated the same images of a category."""
    digest = hashlib.sha256(repr((category, images)).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def category_weights(
    seed: int, category: str, images: tuple[tuple[str, int], ...], n_resamples: int
) -> np.ndarray:
    """``(n_resamples, n)`` multiplicities of a category's ``images`` (stratified: as many normal and as many
    anomalous images as it has). Normal images that several categories hold (saved as ``{stem}@{category}``:
    MVTec LOCO's good images, in the logical and the structural row of their object) are drawn from a
    generator of their files alone, so every row holding them resamples them alike: the rows' numbers stay
    paired image by image in a resample, and the interval of their mean sees that they share those images.
    Other categories: one generator of the category and its images, as always."""
    labels = np.array([label for _, label in images], dtype=np.int64)
    suffix = f"@{category}"
    normal = np.flatnonzero(labels == 0)
    if not any(images[i][0].endswith(suffix) for i in normal):
        return stratified_weights(labels, n_resamples, _generator(seed, category, images))
    files = tuple((images[i][0].removesuffix(suffix), 0) for i in normal)
    weights = np.zeros((n_resamples, len(images)), dtype=np.int64)
    weights[:, normal] = stratified_weights(np.zeros(len(normal)), n_resamples, _generator(seed, "", files))
    anomalous = np.flatnonzero(labels != 0)
    weights[:, anomalous] = stratified_weights(
        np.ones(len(anomalous)), n_resamples, _generator(seed, category, images)
    )
    return weights


def _maps_folder(entry: Entry) -> Path:
    folder = entry.run.output_dir / "maps" / entry.target_key
    if not (folder / IMAGE_SCORES_FILE).is_file():
        raise ZsadError(
            f"--bootstrap needs the saved maps of {entry.run.run_dir} ({entry.target_key}): "
            f"{folder / IMAGE_SCORES_FILE} is missing; evaluate it again with eval.save_maps=true"
        )
    return folder


def entry_draws(entry: Entry, n_resamples: int, seed: int, notes: list[str]) -> dict[str, CategoryDraws]:
    """Every category of one (run, target) on ``n_resamples`` resamples of its images, from its saved maps;
    a note where the maps do not reproduce results.json (then the intervals are not the run's)."""
    folder = _maps_folder(entry)
    with (folder / IMAGE_SCORES_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    fpr_limit = float(
        entry.payload.get("fpr_limit") or (entry.run.results.get("eval") or {}).get("fpr_limit", 0.3)
    )
    recorded = entry.payload.get("categories") or {}
    out = {}
    for category in recorded:
        own = sorted((r for r in rows if r["category"] == category), key=lambda r: r["image"])
        if not own:
            raise ZsadError(f"{folder / IMAGE_SCORES_FILE} has no images of category '{category}'")
        images = tuple((r["image"], int(r["label"])) for r in own)
        maps, masks = _pixel_inputs(folder, own, recorded[category])
        weights = category_weights(seed, category, images, n_resamples)
        weights = np.vstack([np.ones((1, len(images)), dtype=np.int64), weights])  # row 0: the run itself
        values = ResampledCategory(
            [float(r["score"]) for r in own], [label for _, label in images], maps, masks, fpr_limit
        ).metrics(weights)
        differ = [
            m
            for m in RESAMPLED_METRICS
            if isinstance(recorded[category].get(m), float)
            and not abs(values[m][0] - recorded[category][m]) <= _SAME
        ]
        if differ:
            notes.append(
                f"{entry.run.run_dir} {entry.target_key}/{category}: the saved maps give other {', '.join(differ)} "
                "than results.json (maps from another evaluation?); its intervals are those of the saved maps"
            )
        out[category] = CategoryDraws(images, {m: v[1:] for m, v in values.items()})
    return out


def _pixel_inputs(
    folder: Path, rows: list[dict[str, str]], recorded: dict
) -> tuple[list | None, list | None]:
    """Each image's saved map and mask (None for an image without pixel ground truth), or (None, None)
    for a run without maps or pixel metrics."""
    from datamodules.images import load_mask

    maps_files = [folder / f"{r['image']}.npy" for r in rows]
    mask_files = [folder / f"{r['image']}{MASK_SUFFIX}" for r in rows]
    pixel = any(isinstance(recorded.get(m), float) for m in ("pixel_auroc", "aupro"))
    if not pixel or not any(f.is_file() for f in maps_files):
        if pixel:
            raise ZsadError(
                f"--bootstrap: {folder} has no maps (.npy) of its images; evaluate with eval.save_maps=true"
            )
        return None, None
    if not any(f.is_file() for f in mask_files):
        raise ZsadError(
            f"--bootstrap: the maps in {folder} were saved without the masks they were scored against (an older "
            "zsad); evaluate again with eval.save_maps=true"
        )
    maps, masks = [], []
    for map_file, mask_file in zip(maps_files, mask_files, strict=True):
        if not map_file.is_file():
            raise ZsadError(
                f"--bootstrap: the map {map_file} is missing; evaluate again with eval.save_maps=true"
            )
        has_mask = mask_file.is_file()
        maps.append(np.load(map_file, allow_pickle=False) if has_mask else None)
        masks.append(load_mask(mask_file) if has_mask else None)
    return maps, masks


def _cell_draws(
    cell: Cell, per_entry: list[dict[str, CategoryDraws]]
) -> dict[str | None, dict[str, np.ndarray]]:
    """A cell's value on every resample: per category the mean over its replicates; for the dataset (key
    None) the mean over replicates of their category means (over the categories defined in that resample)."""
    out: dict[str | None, dict[str, np.ndarray]] = {}
    metrics = {m for draws in per_entry for d in draws.values() for m in d.values}
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice is an undefined value: NaN
            for category in cell.categories():
                out[category] = {
                    m: np.nanmean([d[category].values[m] for d in per_entry if category in d], axis=0)
                    for m in metrics
                }
            out[None] = {
                m: np.nanmean(
                    [np.nanmean([d.values[m] for d in draws.values()], axis=0) for draws in per_entry], axis=0
                )
                for m in metrics
            }
    return out


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(
            f"--confidence is the intervals' level, a fraction strictly between 0 and 1 (e.g. 0.95), got {confidence}"
        )


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(grouping: Grouping, n_resamples: int, seed: int, confidence: float = CONFIDENCE) -> Bootstrap:
    """Resample every cell's runs (one category at a time) and their ``confidence`` percentile intervals."""
    from datamodules.progress import progress

    if n_resamples < 1:
        raise ConfigError(f"--bootstrap needs a number of resamples >= 1, got {n_resamples}")
    check_confidence(confidence)
    notes: list[str] = []
    draws, images, intervals = {}, {}, {}
    cells = sorted(grouping.cells.items())
    for (row, column), cell in progress(cells, "bootstrap", total=len(cells), unit="cell"):
        per_entry = [entry_draws(e, n_resamples, seed, notes) for e in cell.entries]
        cell_draws = _cell_draws(cell, per_entry)
        draws[(row, column)] = cell_draws
        images[(row, column)] = {}
        for d in per_entry:
            for category, c in d.items():
                images[(row, column)].setdefault(category, set()).add(c.images)
        for category, metrics in cell_draws.items():
            for metric, values in metrics.items():
                found = _interval(values, confidence)
                if found is not None:
                    intervals[(row, column, category, metric)] = found
                undefined = int(np.isnan(values).sum())
                if undefined and found is not None and category is not None:
                    notes.append(
                        f"{row} / {column} / {category}: {metric} is undefined in {undefined} of {n_resamples} resamples (left out of its interval)"
                    )
    return Bootstrap(n_resamples, seed, confidence, intervals, draws, images, notes)


def resolve_setting(name: str, columns: list[str]) -> str:
    """A column by its label, or by a part of it that only one label contains."""
    if name in columns:
        return name
    matches = [c for c in columns if name in c]
    if len(matches) == 1:
        return matches[0]
    shown = "; ".join(columns)
    if matches:
        raise ConfigError(
            f"--compare: '{name}' matches several settings ({'; '.join(matches)}); give the whole label"
        )
    raise ConfigError(f"--compare: no setting '{name}'; the settings are: {shown}")


def _same_images(row: str, a: str, b: str, found: Bootstrap) -> None:
    """Refuse a paired comparison of runs that did not evaluate the same images, naming the difference."""
    lists_a, lists_b = found.images[(row, a)], found.images[(row, b)]
    for category in sorted(set(lists_a) | set(lists_b)):
        if category not in lists_a or category not in lists_b:
            missing = a if category not in lists_a else b
            raise ZsadError(
                f"--compare: {row}: '{missing}' has no results for category {category}: the two settings did "
                "not evaluate the same images"
            )
        if len(lists_a[category] | lists_b[category]) == 1:
            continue
        in_a, in_b = (set().union(*lists[category]) for lists in (lists_a, lists_b))
        only_a, only_b = sorted(in_a - in_b), sorted(in_b - in_a)
        detail = (
            f"{len(only_a)} (image, label) only in '{a}' (e.g. {only_a[:2]}), {len(only_b)} only in '{b}' "
            f"(e.g. {only_b[:2]})"
            if only_a or only_b
            else "the replicates of one setting evaluated different images"
        )
        raise ZsadError(f"--compare: {row}/{category}: the runs did not evaluate the same images: {detail}")


def compare(
    grouping: Grouping, found: Bootstrap, a: str, b: str, metrics: tuple[str, ...]
) -> list[Comparison]:
    """Per dataset both settings have: the paired difference a - b of the dataset-level value (category
    mean, replicate mean), its percentile interval over the same resamples and the p-value."""
    out = []
    for row in grouping.rows:
        if (row, a) not in grouping.cells or (row, b) not in grouping.cells:
            continue
        _same_images(row, a, b, found)
        for metric in metrics:
            values_a = grouping.cells[(row, a)].values(metric)
            values_b = grouping.cells[(row, b)].values(metric)
            draws_a = found.draws[(row, a)][None].get(metric)
            draws_b = found.draws[(row, b)][None].get(metric)
            if not values_a or not values_b or draws_a is None or draws_b is None:
                continue
            difference = draws_a - draws_b
            interval = _interval(difference, found.confidence)
            if interval is None:
                continue
            finite = difference[np.isfinite(difference)]
            far_side = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
            p_value = min(1.0, 2 * (far_side + 1) / (finite.size + 1))
            mean_a, mean_b = float(np.mean(values_a)), float(np.mean(values_b))
            out.append(Comparison(row, metric, mean_a, mean_b, mean_a - mean_b, interval, p_value))
    return out
