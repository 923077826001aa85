"""The curves behind the metrics: ROC, precision-recall and PRO, and the F1-optimal thresholds.

They come from the very rank statistics and PRO steps that :mod:`~lightning_modules.metrics.functional`
integrates into AUROC, AP, F1-max and AUPRO (one split or 16-bit histogram, every distinct score a
threshold), so a curve and its number can never disagree: the trapezoid area under :attr:`RankingCurve.roc`
is the AUROC, ``sum(diff(recall) * precision)`` is the AP, ``max(f1)`` is F1-max.

Thresholds are the distinct scores of the positives, highest first; a sample (or pixel) is predicted
anomalous when its score is ``>= threshold``. The F1-optimal threshold is the highest one that attains
F1-max.

A curve has a point per distinct score (an exact PRO curve two per distinct anomaly-free pixel score,
several times the size of the category's pixel states), so the evaluator keeps each finished category's
curves thinned to :data:`CURVE_POINTS` points spread evenly along their length, the first, last and
F1-optimal points kept (:meth:`CurveSet.thinned`): what the pictures and CSVs show, and the same
F1-optimal thresholds. The metrics are always computed from the full curves; the thinned PRO curve's
points are found without building the whole curve (:func:`pixel_metrics_and_curves` with ``pro_points``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_modules.metrics._arrays import MapLike, MapsLike, UndefinedMetricError
from lightning_modules.metrics._histogram import (
    _format16,
    _histogram_pixels,
    _rank_stats_from_histogram,
    _ValueHistogram,
)
from lightning_modules.metrics._split import (
    _paired_maps,
    _PixelSplit,
    _sort_split,
    _split_pixels,
    _split_scores,
)
from lightning_modules.metrics.functional import PIXEL_METRICS, _pixel_metrics, pixel_metrics
from lightning_modules.metrics.pro import (
    _pro_polyline,
    _pro_steps,
    _pro_steps_from_histogram,
    _require_pro,
    _weight_from,
)
from lightning_modules.metrics.ranking import _rank_stats, _RankStats, _require_both

#: Points a kept curve is thinned to (see the module docstring); pictures and CSVs show at most this many.
CURVE_POINTS = 2000


def thin_indices(
    x: np.ndarray, y: np.ndarray, keep: int | None = None, limit: int = CURVE_POINTS
) -> np.ndarray:
    """Indices of at most ``limit`` points spread evenly along the polyline (x, y) (plus the first, the last
    and ``keep``, always in), ascending; every index when the curve has no more than ``limit`` points.

    Length is measured as |dx| + |dy|. Along a curve that never goes back in x or y (ROC, PRO) that is
    (x - x0) + (y - y0) at each point, computed so rather than summed: the PRO curve's points can then be
    found without the curve (:func:`_thinned_pro_polyline`)."""
    n = int(x.shape[0])
    if n <= limit:
        return np.arange(n)
    dx, dy = np.diff(x), np.diff(y)
    if bool((dx >= 0).all()) and bool((dy >= 0).all()):
        length = (x - x[0]) + (y - y[0])
    else:
        length = np.concatenate(([0.0], np.cumsum(np.abs(dx) + np.abs(dy))))
    targets = np.linspace(0.0, length[-1], limit - 1)
    picked = np.searchsorted(length, targets).clip(0, n - 1)
    extra = [0, n - 1] + ([keep] if keep is not None else [])
    return np.unique(np.concatenate((picked, extra)))


@dataclass
class RankingCurve:
    """ROC and PR curve of one ranking (images or pixels), one entry per threshold (descending)."""

    thresholds: np.ndarray  # float64, the distinct positive scores, highest first
    tpr: np.ndarray  # = recall, positives scoring >= threshold / positives
    fpr: np.ndarray  # negatives scoring >= threshold / negatives
    precision: np.ndarray
    f1: np.ndarray
    roc_fpr: np.ndarray  # ROC polyline from (0, 0) to (1, 1); ties between classes are diagonal segments
    roc_tpr: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.f1))  # first maximum = the highest threshold attaining it

    @property
    def f1_threshold(self) -> float:
        """The threshold that maximises F1 (score >= threshold is anomalous)."""
        return float(self.thresholds[self.best_index])

    @property
    def f1_max(self) -> float:
        return float(self.f1[self.best_index])

    def thinned(self, limit: int = CURVE_POINTS) -> RankingCurve:
        """The ROC polyline and the per-threshold arrays each thinned to about ``limit`` points; the
        F1-optimal threshold stays in (points before it have a lower F1, so it stays the first maximum)."""
        roc = thin_indices(self.roc_fpr, self.roc_tpr, limit=limit)
        per_threshold = thin_indices(self.tpr, self.precision, keep=self.best_index, limit=limit)
        return dataclasses.replace(
            self,
            **{
                name: getattr(self, name)[per_threshold]
                for name in ("thresholds", "tpr", "fpr", "precision", "f1")
            },
            roc_fpr=self.roc_fpr[roc],
            roc_tpr=self.roc_tpr[roc],
        )


@dataclass
class CurveSet:
    """Everything one category's pictures and thresholds need; ``None`` curves have a reason."""

    image: RankingCurve | None
    pixel: RankingCurve | None
    pro_fpr: np.ndarray | None  # exact PRO polyline over the whole FPR range, from (0, 0) to (1, 1)
    pro: np.ndarray | None
    reasons: dict[str, str]  # "image" / "pixel" / "pro" -> why that curve is undefined

    def thinned(self, limit: int = CURVE_POINTS, thin_pro: bool = True) -> CurveSet:
        """Every curve thinned to about ``limit`` points (:func:`thin_indices`); ``thin_pro=False`` keeps
        the PRO curve as it is (already thinned: thinning twice would drop points)."""
        pro = (
            None
            if self.pro_fpr is None or self.pro is None
            else thin_indices(self.pro_fpr, self.pro, limit=limit if thin_pro else self.pro.shape[0])
        )
        return CurveSet(
            image=None if self.image is None else self.image.thinned(limit),
            pixel=None if self.pixel is None else self.pixel.thinned(limit),
            pro_fpr=None if pro is None else self.pro_fpr[pro],
            pro=None if pro is None else self.pro[pro],
            reasons=dict(self.reasons),
        )


def _curve_from_stats(st: _RankStats) -> RankingCurve:
    values = st.values.detach().cpu().numpy() if isinstance(st.values, torch.Tensor) else st.values
    thresholds = np.asarray(values, dtype=np.float64)[::-1]
    counts = st.counts[::-1]
    tp_ge = st.tp_ge[::-1]
    fp_ge = (st.n_neg - st.neg_lt)[::-1]
    fp_gt = (st.n_neg - st.neg_le)[::-1]
    tp_gt = tp_ge - counts
    # Per threshold: the corner before its ties are counted (> t) and after (>= t).
    roc_fp = np.concatenate(([0], np.stack([fp_gt, fp_ge], axis=1).reshape(-1), [st.n_neg]))
    roc_tp = np.concatenate(([0], np.stack([tp_gt, tp_ge], axis=1).reshape(-1), [st.n_pos]))
    return RankingCurve(
        thresholds=thresholds,
        tpr=tp_ge / st.n_pos,
        fpr=fp_ge / st.n_neg,
        precision=tp_ge / (tp_ge + fp_ge),
        f1=2.0 * tp_ge / (tp_ge + fp_ge + st.n_pos),
        roc_fpr=roc_fp / st.n_neg,
        roc_tpr=roc_tp / st.n_pos,
        n_pos=st.n_pos,
        n_neg=st.n_neg,
    )


def ranking_curve(scores: MapLike, labels: MapLike) -> RankingCurve:
    """ROC/PR curve of image scores (or any flat scores) with 0/1 labels; raises ``UndefinedMetricError``
    when one class is absent."""
    split = _split_scores(scores, labels)
    _require_both(split)
    return _curve_from_stats(_rank_stats(split))


#: What :func:`pixel_curves` returns: ``(ranking, (pro_fpr, pro), reasons)``, undefined parts None.
PixelCurves = tuple[RankingCurve | None, tuple[np.ndarray, np.ndarray] | None, dict[str, str]]


def pixel_curves(maps: MapsLike, masks: MapsLike) -> PixelCurves:
    """Pixel ROC/PR curve and the whole exact PRO curve from one split (or one 16-bit histogram), the
    same the pixel metrics use. Returns ``(ranking, (pro_fpr, pro), reasons)``; undefined parts are None."""
    map_list, mask_list = _paired_maps(maps, masks)
    if _format16(map_list):
        return _curves_from(
            _histogram_pixels(map_list, mask_list), _rank_stats_from_histogram, _pro_of_histogram
        )
    split = _split_pixels(map_list, mask_list, regions=True)
    if split.n_pos and split.n_neg:
        _sort_split(split)
    return _curves_from(split, _rank_stats, _whole_pro)


def pixel_metrics_and_curves(
    maps: MapsLike, masks: MapsLike, fpr_limit: float = 0.3, pro_points: int | None = None
) -> tuple[dict[str, float | None], dict[str, str], PixelCurves]:
    """``pixel_metrics(maps, masks, fpr_limit)`` and ``pixel_curves(maps, masks)`` from one split, one sort
    and one set of rank statistics: the curves then cost only the PRO steps (float32, 60 maps of 518 x 518:
    1.25-1.5x faster than the two calls, ``benchmarks/metrics.py --curves``). 16-bit scores keep both paths: the metrics split them (the cflow AUPRO needs the split)
    while the curves count bit patterns, whose PRO sums round differently in the last bits.

    With ``pro_points`` the PRO curve comes thinned, exactly the points ``thin_indices(pro_fpr, pro,
    limit=pro_points)`` keeps of the whole one; of a split they are found without the whole curve, which
    has two float64 vertices per distinct anomaly-free score (:func:`_thinned_pro_polyline`)."""
    map_list, mask_list = _paired_maps(maps, masks)
    if _format16(map_list):
        values, reasons = pixel_metrics(map_list, mask_list, fpr_limit)
        ranking, pro, pixel_reasons = pixel_curves(map_list, mask_list)
        if pro is not None and pro_points is not None:
            kept = thin_indices(*pro, limit=pro_points)
            pro = (pro[0][kept], pro[1][kept])
        return values, reasons, (ranking, pro, pixel_reasons)
    values, reasons, split, stats = _pixel_metrics(map_list, mask_list, fpr_limit, PIXEL_METRICS)
    assert isinstance(split, _PixelSplit)  # every pixel metric of non-16-bit scores reads a sorted split
    # The metrics computed the statistics whenever both classes are present, the only time they are asked for.
    curves = _curves_from(
        split,
        lambda sp: stats if stats is not None else _rank_stats(sp),
        _whole_pro if pro_points is None else lambda sp: _thinned_pro_polyline(sp, pro_points),
    )
    return values, reasons, curves


def _whole_pro(sp: _PixelSplit) -> tuple[np.ndarray, np.ndarray]:
    return _pro_polyline(*_pro_steps(sp, 1.0), 1.0, to_one=True)


def _pro_of_histogram(h: _ValueHistogram) -> tuple[np.ndarray, np.ndarray]:
    return _pro_polyline(*_pro_steps_from_histogram(h), 1.0, to_one=True)


def _thinned_pro_polyline(sp: _PixelSplit, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x[k], y[k])`` for the whole PRO polyline ``x, y = _whole_pro(sp)`` and ``k = thin_indices(x, y,
    limit=limit)``, bit for bit, without the polyline (for 100 maps of 518 x 518, ~25 M vertices and ~3 GiB
    of temporaries while thinning).

    The polyline starts at (0, 0); per distinct anomaly-free score u, highest first, it has a vertex A(u)
    (the FPR of the threshold above, PRO of the scores > u) and B(u) (FPR and PRO of the scores >= u); it
    ends at B(lowest) or, when PRO stays below 1 there, at (1, 1). It never goes back, so a vertex's length
    along it is x + y, and the first vertex at each target length is found by a binary search over the
    sorted anomaly-free scores, each probe reading the same counts and ``_weight_from`` values as
    :func:`~.pro._pro_steps`. Vertices are named 2 C(u) (A) and 2 C(u) + 1 (B), C(u) = #scores >= u.
    """
    _require_pro(sp)
    _sort_split(sp)
    ops, neg, n = sp.ops, sp.neg, sp.n_neg
    weight_from = _weight_from(sp)

    def vertices(c: np.ndarray) -> tuple[np.ndarray, ...]:
        """(xa, ya, xb, yb, C) of the threshold u = the c-th highest anomaly-free score."""
        u = neg[ops.from_numpy(n - c)]
        first = ops.to_numpy(ops.searchsorted(neg, u, right=False)).astype(np.int64)
        after = ops.to_numpy(ops.searchsorted(neg, u, right=True)).astype(np.int64)
        pos_below = ops.to_numpy(ops.searchsorted(sp.pos, u, right=False))
        pos_at_or_below = ops.to_numpy(ops.searchsorted(sp.pos, u, right=True))
        ya = np.minimum(weight_from[pos_at_or_below] / sp.n_regions, 1.0)
        yb = np.minimum(weight_from[pos_below] / sp.n_regions, 1.0)
        return (n - after) / n, ya, (n - first) / n, yb, n - first

    *_, xb_last, yb_last, _ = vertices(np.array([n], dtype=np.int64))
    closed = bool(yb_last[0] < 1.0)
    n_thresholds = 1 + ops.count_true(neg[1:] != neg[:-1])
    if 2 * n_thresholds + 1 + closed <= limit:  # thin_indices keeps every vertex
        return _whole_pro(sp)
    end = np.float64(1.0) + np.float64(1.0) if closed else float((xb_last + yb_last)[0])
    targets = np.linspace(0.0, end, limit - 1)
    lo, hi = np.ones(targets.shape, dtype=np.int64), np.full(targets.shape, n, dtype=np.int64)
    while bool((lo < hi).any()):  # the smallest C whose B vertex reaches the target
        mid = (lo + hi) // 2
        _, _, xb, yb, _ = vertices(mid)
        reached = xb + yb >= targets
        hi, lo = np.where(reached, mid, hi), np.where(reached, lo, mid + 1)
    xa, ya, xb, yb, count = vertices(lo)
    names = np.where(xa + ya >= targets, 2 * count, 2 * count + 1)
    names[xb + yb < targets] = 2 * n + 2  # past the lowest threshold: the closing vertex (1, 1)
    names[targets <= 0.0] = -1  # the first vertex, (0, 0)
    names = np.unique(np.concatenate((names, [-1, 2 * n + 2 if closed else 2 * n + 1])))
    inner = names[(names >= 0) & (names <= 2 * n + 1)]
    xa, ya, xb, yb, _ = vertices(inner // 2)
    is_a = inner % 2 == 0
    x = np.concatenate(([0.0], np.where(is_a, xa, xb), [1.0] * closed))
    y = np.concatenate(([0.0], np.where(is_a, ya, yb), [1.0] * closed))
    return x, y


def _curves_from(
    source: _PixelSplit | _ValueHistogram,
    stats_of: Callable[[Any], _RankStats],
    pro_of: Callable[[Any], tuple[np.ndarray, np.ndarray]],
) -> PixelCurves:
    reasons: dict[str, str] = {}
    ranking = pro = None
    try:
        _require_both(source, negatives="anomaly-free pixels", positives="anomalous pixels")
        ranking = _curve_from_stats(stats_of(source))
    except UndefinedMetricError as err:
        reasons["pixel"] = str(err)
    try:
        _require_pro(source)
        pro = pro_of(source)
    except UndefinedMetricError as err:
        reasons["pro"] = str(err)
    return ranking, pro, reasons


def curve_set(
    scores: MapLike, labels: MapLike, maps: Sequence[MapLike] = (), masks: Sequence[MapLike] = ()
) -> CurveSet:
    """All curves of one category (pixel curves only when maps with ground truth are given)."""
    return curves_of_category(scores, labels, pixel_curves(list(maps), list(masks)) if len(maps) else None)


def curves_of_category(scores: MapLike, labels: MapLike, pixel: PixelCurves | None) -> CurveSet:
    """The image curve of ``scores`` with the given pixel curves (None: the category has no maps with
    ground truth)."""
    reasons: dict[str, str] = {}
    image = None
    try:
        image = ranking_curve(scores, labels)
    except UndefinedMetricError as err:
        reasons["image"] = str(err)
    ranking, pro = None, None
    if pixel is None:
        reasons["pixel"] = reasons["pro"] = "no anomaly maps with pixel ground truth"
    else:
        ranking, pro, pixel_reasons = pixel
        reasons.update(pixel_reasons)
    return CurveSet(
        image=image,
        pixel=ranking,
        pro_fpr=None if pro is None else pro[0],
        pro=None if pro is None else pro[1],
        reasons=reasons,
    )


def f1_thresholds(curves: dict[str, CurveSet]) -> dict[str, dict[str, float | None]]:
    """Per category the F1-optimal image and pixel thresholds (None where that curve is undefined)."""
    return {
        category: {
            "image": None if c.image is None else c.image.f1_threshold,
            "pixel": None if c.pixel is None else c.pixel.f1_threshold,
        }
        for category, c in curves.items()
    }
