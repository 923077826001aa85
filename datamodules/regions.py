"""Defect regions with saturation rules: the ground truth of the sPRO metric (MVTec LOCO AD, AutoVI).

These datasets store the mask of an anomalous image as a folder of PNGs, one per defect region ("channel"),
each holding one positive pixel value that names the defect type in the category's ``defects_config.json``::

    [{"defect_name": "missing_almonds", "pixel_value": 255, "saturation_threshold": 1.0,
      "relative_saturation": true}, ...]

A region counts as fully found once the predicted area inside it reaches its *saturation area*: the
threshold times the region's area when ``relative_saturation`` (a fraction in (0, 1]), else the threshold
itself (pixels), capped at the region's area. The reading and the rules are MVTec's LOCO evaluation code's
(``src/image.py``: ``DefectsConfig``, ``GroundTruthChannel``), re-implemented here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.errors import CorruptImageError, DatasetLayoutError
from datamodules.images import region_files

DEFECTS_CONFIG = "defects_config.json"


@dataclasses.dataclass(frozen=True)
class DefectRule:
    """One entry of ``defects_config.json``."""

    name: str
    pixel_value: int
    saturation_threshold: float
    relative: bool

    def saturation_area(self, area: int, pixel_scale: float = 1.0) -> float:
        """The saturation area of a region of ``area`` pixels. ``pixel_scale`` is the ratio of the evaluated
        resolution's pixel count to the ground truth's: an absolute threshold (pixels of the original image)
        scales with it; 1.0 is MVTec's rule exactly (``int(t * area)`` / ``min(t, area)``)."""
        if self.relative:
            return float(int(self.saturation_threshold * area))
        return float(min(self.saturation_threshold * pixel_scale, area))


RegionRules = Mapping[int, DefectRule]  # pixel value -> rule


def read_defects_config(path: Path) -> dict[int, DefectRule]:
    """The rules of one category, checked as MVTec's code checks them; problems are one-line errors."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f"cannot read {path}: {error}") from None
    if not isinstance(entries, list):
        raise DatasetLayoutError(f"{path}: expected a list of defect entries, got {type(entries).__name__}")
    rules: dict[int, DefectRule] = {}
    for i, entry in enumerate(entries):
        try:
            rule = DefectRule(
                name=str(entry["defect_name"]),
                pixel_value=entry["pixel_value"],
                saturation_threshold=entry["saturation_threshold"],
                relative=entry["relative_saturation"],
            )
        except (KeyError, TypeError) as error:
            raise DatasetLayoutError(f"{path}: entry {i} lacks {error} (see the module docstring)") from None
        value, threshold = rule.pixel_value, rule.saturation_threshold
        if not isinstance(value, int) or not 1 <= value <= 255:
            raise DatasetLayoutError(
                f"{path}: entry {i} ({rule.name}) has pixel_value {value!r}, not in 1..255"
            )
        if rule.relative and not (isinstance(threshold, float) and 0.0 < threshold <= 1.0):
            raise DatasetLayoutError(
                f"{path}: entry {i} ({rule.name}) is relative but its saturation_threshold {threshold!r} is not a "
                "fraction in (0, 1]"
            )
        if not rule.relative and not (isinstance(threshold, int) and not isinstance(threshold, bool)):
            raise DatasetLayoutError(
                f"{path}: entry {i} ({rule.name}) is absolute but its saturation_threshold {threshold!r} is not "
                "a pixel count"
            )
        rules[value] = rule
    return rules


def load_regions(folder: Path, rules: RegionRules) -> list[tuple[np.ndarray, DefectRule]]:
    """Each region PNG of ``folder`` (sorted) as a ``(H, W)`` bool array with its rule. A PNG must hold
    exactly one positive value (and zeros), and that value must be in ``rules``. A grey region saved as RGB
    (AutoVI) counts by its first channel, as AutoVI's evaluation code reads it."""
    regions = []
    for path in region_files(folder):
        try:
            with Image.open(path) as image:
                array = np.asarray(image)
        except OSError as error:
            raise CorruptImageError(
                f"cannot decode {path} ({error}); re-download or remove the file"
            ) from None
        if array.ndim == 3:  # AutoVI stores grey regions as RGB(A); its code reads channel 0 (image.py)
            array = array[..., :3]
        if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.integer):
            raise CorruptImageError(
                f"region {path} is not an integer image (shape {array.shape}, {array.dtype})"
            )
        values = [int(v) for v in np.unique(array) if v != 0]
        if len(values) != 1:
            raise CorruptImageError(
                f"region {path} holds pixel values {values}; expected exactly one defect value"
            )
        if values[0] not in rules:
            raise CorruptImageError(
                f"region {path} has pixel value {values[0]}, which {DEFECTS_CONFIG} does not list "
                f"(known: {sorted(rules)})"
            )
        regions.append(((array[..., 0] if array.ndim == 3 else array) != 0, rules[values[0]]))
    return regions
