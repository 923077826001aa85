"""16-bit scores: counting the 65,536 bit patterns replaces the split and the sort."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_modules.metrics._arrays import MapLike, _binarise
from lightning_modules.metrics._split import _region_weights
from lightning_modules.metrics.ranking import _RankStats

# A 16-bit score (float16 storage, ``eval.pixel_score_dtype=float16``, or bfloat16 maps) takes one of 65,536
# bit patterns, so one histogram per image (np.bincount, O(P)) holds everything the exact metrics need: the
# patterns in value order are the distinct thresholds. No split, no sort, no copy of the scores.
_FORMATS16 = {torch.float16: "float16", torch.bfloat16: "bfloat16", np.dtype(np.float16): "float16"}
_N_PATTERNS = 1 << 16


def _format16(map_list: Sequence[MapLike]) -> str | None:
    """'float16' or 'bfloat16' when every map is stored in that format, else None."""
    formats = {_FORMATS16.get(m.dtype) for m in map_list}
    return formats.pop() if len(formats) == 1 and None not in formats else None


@functools.cache
def _pattern_values(fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(value of every bit pattern as float64, the non-NaN patterns in ascending value order)."""
    patterns = torch.arange(_N_PATTERNS, dtype=torch.int32).to(torch.int16)
    values = patterns.view(getattr(torch, fmt)).double().numpy()
    order = np.argsort(values, kind="stable")  # NaN patterns sort last
    return values, order[: int(np.count_nonzero(~np.isnan(values)))]


def _pattern_counts(m: MapLike, weights: np.ndarray | None = None) -> np.ndarray:
    """Occurrences (or summed weights) of each bit pattern among the scores of m."""
    if isinstance(m, Tensor):
        bits = m.detach().reshape(-1).view(torch.int16)
        if bits.device.type != "cpu" and weights is None:
            return torch.bincount(bits.int() & 0xFFFF, minlength=_N_PATTERNS).cpu().numpy()
        bits = bits.cpu().numpy()
    else:
        bits = np.ascontiguousarray(m).reshape(-1)
    return np.bincount(bits.view(np.uint16), weights=weights, minlength=_N_PATTERNS)


@dataclass
class _ValueHistogram:
    """Pixel counts per distinct score (ascending): the exact-metric equivalent of a sorted split."""

    neg: np.ndarray  # int64, anomaly-free pixels with this score
    pos: np.ndarray  # int64, anomalous pixels with this score
    pos_weight: np.ndarray  # float64, sum of 1/|region| over those anomalous pixels
    n_regions: int
    values: np.ndarray | None = None  # float64, the distinct scores themselves

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())


def _histogram_pixels(map_list: Sequence[MapLike], mask_list: Sequence[MapLike]) -> _ValueHistogram:
    """Histograms of 16-bit scores by ground truth; regions are labelled as for the split."""
    fmt = _format16(map_list)
    every = np.zeros(_N_PATTERNS, dtype=np.int64)
    pos = np.zeros(_N_PATTERNS, dtype=np.int64)
    weight = np.zeros(_N_PATTERNS, dtype=np.float64)
    n_regions = 0
    for m, g in zip(map_list, mask_list, strict=True):
        every += _pattern_counts(m)
        g = _binarise(g.detach().cpu().numpy() if isinstance(g, Tensor) else np.asarray(g))
        if not g.any():
            continue
        anomalous = m.detach().cpu()[torch.from_numpy(g)] if isinstance(m, Tensor) else np.asarray(m)[g]
        pixel_weight, size, _ = _region_weights(g, tuple(g.shape))
        pos += _pattern_counts(anomalous)
        weight += _pattern_counts(anomalous, pixel_weight)
        n_regions += len(size)
    values, order = _pattern_values(fmt)
    nan = np.isnan(values)
    if pos[nan].any():
        raise ValueError("anomaly maps contain NaN (at anomalous pixels)")
    if (every - pos)[nan].any():
        raise ValueError("anomaly maps contain NaN (at anomaly-free pixels)")
    # Patterns with equal values (-0 and +0) are one threshold.
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))

    def by_value(counts: np.ndarray) -> np.ndarray:
        return np.add.reduceat(counts[order], starts)

    return _ValueHistogram(
        by_value(every - pos), by_value(pos), by_value(weight), n_regions, values=ordered[starts]
    )


def _rank_stats_from_histogram(h: _ValueHistogram) -> _RankStats:
    neg_le = np.cumsum(h.neg)
    present = h.pos > 0
    counts = h.pos[present]
    tp_ge = np.cumsum(counts[::-1])[::-1]
    values = None if h.values is None else h.values[present]
    return _RankStats(counts, tp_ge, (neg_le - h.neg)[present], neg_le[present], h.n_pos, h.n_neg, values)
