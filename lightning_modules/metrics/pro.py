"""PRO and AUPRO: the exact normalised AUPRO (MVTec AD definition) and the biased 200-threshold cflow-style
AUPRO of the published tables (reproduced bit for bit, for comparison only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_modules.metrics._arrays import MapLike, MapsLike, UndefinedMetricError, _is_float64
from lightning_modules.metrics._histogram import _format16, _histogram_pixels, _ValueHistogram
from lightning_modules.metrics._split import (
    _check_neg_nan,
    _normals_needed,
    _paired_maps,
    _PixelSplit,
    _sort_split,
    _split_pixels,
)

#: Thresholds of the cflow-style AUPRO (the AnomalyCLIP/VAND evaluation code).
CFLOW_THRESHOLDS = 200


def _check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    return fpr_limit


def _require_pro(sp: _PixelSplit | _ValueHistogram) -> None:
    if sp.n_regions == 0:
        raise UndefinedMetricError("no anomalous regions in the ground truth")
    if sp.n_neg == 0:
        raise UndefinedMetricError("no anomaly-free pixels in the ground truth")


def _top_normals(sp: _PixelSplit, k: int) -> tuple[Any, int]:
    """The k largest anomaly-free scores (ascending) and how many other anomaly-free pixels tie with the
    smallest of them."""
    ops = sp.ops
    n = int(sp.neg.shape[0])
    if sp.n_neg_below and not sp.neg_sorted:
        # A prefiltered split holds little more than the k pixels needed: one sort beats select-then-sort.
        sp.neg = ops.sort_(sp.neg)
        sp.neg_sorted = True
        _check_neg_nan(sp, sp.neg[-1])
    if sp.neg_sorted:
        top = sp.neg[n - k :]
        ties = (n - k) - int(ops.searchsorted(sp.neg, top[:1], right=False)[0])
    else:
        top, ties = ops.top_k_sorted_(sp.neg, k)
        _check_neg_nan(sp, top[-1])  # NaN is the largest for partition/topk and sorts last
    return top, ties


def _weight_from(sp: _PixelSplit) -> np.ndarray:
    """``w[i]`` = the region weights of the anomalous pixels ``pos[i:]`` summed from the highest score down
    (``w[n_pos] = 0``; ``pos`` is sorted): one running sum from which every PRO value of the curve is read,
    so that the curve never steps down by a rounding."""
    weight = sp.ops.to_numpy(sp.pos_weight).astype(np.float64, copy=False)
    return np.concatenate((np.cumsum(weight[::-1])[::-1], [0.0]))


def _pro_steps(sp: _PixelSplit, fpr_limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact PRO curve down to the first threshold whose FPR exceeds ``fpr_limit``.

    Returns float64 arrays over the distinct anomaly-free scores u_1 > u_2 > ... (only these move the FPR):
    ``fpr[k]`` = FPR at threshold u_k, ``pro_ge[k]`` = PRO counting pixels with score >= u_k and
    ``pro_gt[k]`` = PRO counting pixels with score > u_k. The curve's polyline runs
    (fpr[k-1], pro_ge[k-1]) -> (fpr[k-1], pro_gt[k]) (vertical: anomalous pixels only) -> (fpr[k], pro_ge[k]).
    PRO values are ``_weight_from(sp)`` at the first anomalous pixel scoring >= (or >) the threshold.
    """
    _require_pro(sp)
    ops = sp.ops
    n_ok = sp.n_neg
    k = _normals_needed(n_ok, fpr_limit)
    top, ties = _top_normals(sp, k)
    thresholds, counts = ops.unique_counts(top)  # ascending
    n_thr = int(thresholds.shape[0])
    # Anomalous pixels below thresholds[i] (pos is sorted): those whose count of thresholds <= their score is
    # at most i; at or below it: those with at most i thresholds < their score.
    idx_le = ops.searchsorted(thresholds, sp.pos, right=True, sorted_needles=True)
    idx_lt = ops.searchsorted(thresholds, sp.pos, right=False, sorted_needles=True)
    below = np.cumsum(ops.to_numpy(ops.bincount(idx_le, None, n_thr + 1))[:n_thr])
    at_or_below = np.cumsum(ops.to_numpy(ops.bincount(idx_lt, None, n_thr + 1))[:n_thr])
    weight_from = _weight_from(sp)
    counts = ops.to_numpy(counts).astype(np.int64)
    counts[0] += ties
    fpr = np.cumsum(counts[::-1]) / n_ok
    pro_ge = weight_from[below[::-1]] / sp.n_regions
    pro_gt = weight_from[at_or_below[::-1]] / sp.n_regions
    return fpr, pro_gt, pro_ge


def _aupro_from_split(sp: _PixelSplit, fpr_limit: float) -> float:
    """Exact AUPRO without materialising the curve: O(S log S) for the S anomaly-free pixels above the limit.

    With the anomaly-free scores above the limit sorted (``top``, ascending, t* = top[0]), every such pixel
    except those tied with t* closes one trapezoid of width 1/n_ok and mean height
    (PRO(> v) + PRO(>= v)) / 2 at its score v. Summed over pixels, an anomalous pixel p with weight
    1/|region| enters PRO(>= v) for the #{top <= p} - i0 of them above the t* tie (and PRO(> v) likewise with
    #{top < p}), so the whole area is one dot product over anomalous pixels; the last trapezoid (the t* tie,
    where the FPR crosses the limit) is interpolated at the limit.
    """
    _require_pro(sp)
    ops = sp.ops
    n_ok = sp.n_neg
    k = _normals_needed(n_ok, fpr_limit)
    top, ties = _top_normals(sp, k)
    i0 = int(ops.searchsorted(top, top[:1], right=True)[0])  # top values tied with t* = top[0]
    # Pixels below t* never count before the FPR passes the limit; pos is sorted (_split_pixels).
    start = int(ops.searchsorted(sp.pos, top[:1], right=False)[0])
    pos, weight = sp.pos[start:], sp.pos_weight[start:]
    n_le = ops.searchsorted(top, pos, right=True, sorted_needles=True)  # #top <= p
    # #top < p differs from #top <= p only where p equals a top score; search again just for those.
    n_lt = n_le.clone() if isinstance(n_le, Tensor) else n_le.copy()
    tied = (n_le > 0) & (top[(n_le - 1).clip(min=0)] == pos)
    n_lt[tied] = ops.searchsorted(top, pos[tied], right=False)
    n_le, n_lt, w = ops.to_numpy(n_le), ops.to_numpy(n_lt), ops.to_numpy(weight)
    above = np.maximum(n_le - i0, 0) + np.maximum(n_lt - i0, 0)
    # np.sum (pairwise, single-threaded), not np.dot: BLAS may split the sum by thread count, and N processes
    # must reproduce one process bit for bit.
    area = 0.5 * float(np.sum(w * above)) / (n_ok * sp.n_regions)
    # Last trapezoid: the t* tie group moves the FPR from x0 past the limit to x1.
    x0, x1 = (k - i0) / n_ok, (k + ties) / n_ok
    y0 = float(w[n_lt > 0].sum()) / sp.n_regions  # PRO(> t*)
    y1 = float(w.sum()) / sp.n_regions  # PRO(>= t*)
    return (area + _last_trapezoid(x0, x1, y0, y1, fpr_limit)) / fpr_limit


def _last_trapezoid(x0: float, x1: float, y0: float, y1: float, fpr_limit: float) -> float:
    """The area of the PRO curve's segment from (x0, y0) to (x1, y1) up to ``fpr_limit`` (interpolated
    where the segment crosses it): the exact AUPRO's last piece, where the FPR passes the limit."""
    if fpr_limit >= x1:
        return 0.5 * (y0 + y1) * (x1 - x0)
    if fpr_limit > x0:
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        return 0.5 * (y0 + y_limit) * (fpr_limit - x0)
    return 0.0


def _pro_steps_from_histogram(h: _ValueHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_pro_steps`` (same arrays, same meaning) over every distinct anomaly-free score."""
    _require_pro(h)
    neg_ge = np.cumsum(h.neg[::-1])[::-1]
    weight_ge = np.cumsum(h.pos_weight[::-1])[::-1]
    thresholds = np.flatnonzero(h.neg)[::-1]  # descending scores
    fpr = neg_ge[thresholds] / neg_ge[0]
    pro_ge = weight_ge[thresholds] / h.n_regions
    pro_gt = (weight_ge - h.pos_weight)[thresholds] / h.n_regions
    return fpr, pro_gt, pro_ge


def _aupro_from_histogram(h: _ValueHistogram, fpr_limit: float) -> float:
    x, y = _pro_polyline(*_pro_steps_from_histogram(h), fpr_limit)
    return trapezoid_area(x, y, fpr_limit) / fpr_limit


def pro_curve(maps: MapsLike, masks: MapsLike, fpr_limit: float | None = None) -> tuple[Tensor, Tensor]:
    """The exact PRO curve as polyline vertices ``(fpr, pro)`` (float64, CPU), starting at (0, 0).

    Without ``fpr_limit`` the curve ends at (1, 1) like the MVTec AD code; with it, the curve stops at the
    first vertex whose FPR exceeds the limit (all that AUPRO needs, and only those pixels get sorted).
    Vertices on vertical segments are merged: the polyline is the same as with one vertex per threshold.
    """
    limit = 1.0 if fpr_limit is None else _check_fpr_limit(fpr_limit)
    map_list, mask_list = _paired_maps(maps, masks)
    if _format16(map_list):
        fpr, pro_gt, pro_ge = _pro_steps_from_histogram(_histogram_pixels(map_list, mask_list))
    else:
        fpr, pro_gt, pro_ge = _pro_steps(_split_pixels(map_list, mask_list, aupro_fpr_limit=limit), limit)
    x, y = _pro_polyline(fpr, pro_gt, pro_ge, limit, to_one=fpr_limit is None)
    return torch.from_numpy(x), torch.from_numpy(y)


def _pro_polyline(
    fpr: np.ndarray, pro_gt: np.ndarray, pro_ge: np.ndarray, limit: float, to_one: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the PRO polyline from (0, 0) to the first vertex whose FPR reaches past ``limit``; with
    ``to_one``, closed at (1, 1) when it ends lower (anomalous pixels scored below every anomaly-free one).
    Filled in place: a whole-range curve has two vertices per distinct anomaly-free score."""
    n = min(fpr.shape[0], int(np.searchsorted(fpr, limit, side="right")) + 1)
    closed = to_one and min(float(pro_ge[n - 1]), 1.0) < 1.0
    x = np.empty(2 * n + 1 + closed)
    y = np.empty(2 * n + 1 + closed)
    x[:2] = y[0] = 0.0
    x[3 : 2 * n : 2] = fpr[: n - 1]
    x[2 : 2 * n + 1 : 2] = fpr[:n]
    y[1 : 2 * n : 2] = pro_gt[:n]
    y[2 : 2 * n + 1 : 2] = pro_ge[:n]
    if closed:
        x[-1] = y[-1] = 1.0
    np.minimum(y, 1.0, out=y)  # summed weights may round past 1 (the MVTec AD code clips too)
    return x, y


def trapezoid_area(x: MapLike, y: MapLike, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing x, from x[0] to ``x_max``, y linearly interpolated
    at ``x_max``. A curve that ends before ``x_max`` is integrated to its end (not extrapolated)."""
    xs = np.asarray(x.cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    ys = np.asarray(y.cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
    stop = int(np.searchsorted(xs, x_max, side="right"))
    area = float(np.sum(0.5 * (ys[1:stop] + ys[: stop - 1]) * (xs[1:stop] - xs[: stop - 1])))
    if 0 < stop < xs.shape[0] and x_max > xs[stop - 1]:
        x0, x1, y0, y1 = xs[stop - 1], xs[stop], ys[stop - 1], ys[stop]
        y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_max) * (x_max - x0)
    return area


def aupro(maps: MapsLike, masks: MapsLike, fpr_limit: float = 0.3) -> float:
    """Exact normalised AUPRO (MVTec AD definition): area under PRO over FPR in [0, fpr_limit] / fpr_limit.

    ``maps``/``masks``: (N,H,W) arrays or sequences of (H,W) arrays (sizes may differ between images),
    torch or numpy; masks are binarised with > 0. O(P + S log S) for P pixels, S of them above the limit.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    map_list, mask_list = _paired_maps(maps, masks)
    if _format16(map_list):
        return _aupro_from_histogram(_histogram_pixels(map_list, mask_list), fpr_limit)
    return _aupro_from_split(_split_pixels(map_list, mask_list, aupro_fpr_limit=fpr_limit), fpr_limit)


def _legacy_from_split(sp: _PixelSplit, fpr_limit: float, num_thresholds: int) -> float:
    """The cflow-style AUPRO from a split with region ids: the reference code's thresholds and arithmetic,
    but FPR counts and per-region hits come from the sorted split (one search per threshold and one
    histogram of the anomalous pixels by (region, threshold bin)) instead of 200 passes over every pixel.
    Counts are integers, so the result is the reference's bit for bit."""
    _require_pro(sp)
    if sp.n_neg_below:
        raise RuntimeError("the legacy AUPRO needs every anomaly-free pixel; split without aupro_fpr_limit")
    _sort_split(sp)
    ops = sp.ops
    lo = min(float(sp.neg[0]), float(sp.pos[0]))
    hi = max(float(sp.neg[-1]), float(sp.pos[-1]))
    dtype = np.float64 if _is_float64(sp.neg) else np.float32
    thresholds = _legacy_thresholds(lo, hi, dtype, num_thresholds)
    n_thr = len(thresholds)
    th = ops.from_numpy(thresholds)
    # FPR(t) = #(neg > t) / n_neg; neg is sorted.
    neg_le = ops.to_numpy(ops.searchsorted(sp.neg, th, right=True)).astype(np.int64)
    fprs = (sp.n_neg - neg_le) / sp.n_neg
    # An anomalous pixel p counts at threshold i iff p > t_i, i.e. for i < #(t < p): histogram by region and
    # that bin, then sum the bins above i.
    bins = ops.searchsorted(th, sp.pos, right=False, sorted_needles=True)
    flat = sp.pos_region * (n_thr + 1) + bins
    hist = ops.to_numpy(ops.bincount(flat, None, sp.n_regions * (n_thr + 1))).reshape(sp.n_regions, n_thr + 1)
    tp = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)  # [region, threshold]
    ratio = np.ascontiguousarray((tp / sp.region_sizes.astype(np.float64)[:, None]).T)
    pros = np.array([np.mean(row) for row in ratio])  # per threshold, as the reference's np.mean
    return _legacy_area(fprs, pros, fpr_limit)


def _legacy_thresholds(lo: float, hi: float, dtype: type, num_thresholds: int) -> np.ndarray:
    """The reference code's thresholds over scores from ``lo`` to ``hi``, in the maps' dtype (float32 in
    practice): ``np.arange(min, max, (max - min) / num_thresholds)``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UndefinedMetricError("scores include infinity: the legacy thresholds are undefined")
    min_th, max_th = dtype(lo), dtype(hi)
    delta = (max_th - min_th) / dtype(num_thresholds)
    if not delta > 0:
        raise UndefinedMetricError("all anomaly scores are equal: the legacy thresholds are undefined")
    # np.arange returns float64; each threshold is compared in the maps' dtype, as numpy 1.x did with the
    # reference's ``amaps <= th``.
    return np.arange(min_th, max_th, delta).astype(dtype)


def _legacy_area(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float) -> float:
    """The reference code's area: the points with FPR < ``fpr_limit``, FPRs min-max rescaled, trapezoids."""
    keep = fprs < fpr_limit
    if int(keep.sum()) < 2:
        raise UndefinedMetricError(f"fewer than 2 of the legacy thresholds have FPR < {fpr_limit}")
    f, p = fprs[keep], pros[keep]
    span = f.max() - f.min()
    if not span > 0:
        raise UndefinedMetricError(f"the legacy FPRs below {fpr_limit} are all equal: rescaling is undefined")
    f = (f - f.min()) / span
    # sklearn.metrics.auc on FPRs that fall as the threshold rises: area = -trapezoid(p, f).
    return float(-np.sum(0.5 * (p[1:] + p[:-1]) * (f[1:] - f[:-1]))) + 0.0  # + 0.0: no -0.0 for a zero area


def legacy_cflow_aupro(
    maps: MapsLike, masks: MapsLike, fpr_limit: float = 0.3, num_thresholds: int = CFLOW_THRESHOLDS
) -> float:
    """The biased "cflow-style" AUPRO of the AnomalyCLIP/VAND/MuSc code, only for comparison with their numbers.

    ``num_thresholds`` thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` over all scores,
    keep points with FPR < ``fpr_limit``, min-max rescale those FPRs to [0, 1], then the trapezoid rule.
    Regions are labelled once (the reference relabels per threshold; same result).
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    sp = _split_pixels(maps, masks, region_ids=True)
    return _legacy_from_split(sp, fpr_limit, num_thresholds)
