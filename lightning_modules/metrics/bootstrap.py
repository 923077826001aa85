"""Exact metrics of bootstrap resamples of one category's test images, many resamples at once.

A resample draws the category's images with replacement, so it is the images with integer multiplicities:
``weights[b, i]`` copies of image i in resample b (:func:`stratified_weights` draws them by label). Every
metric of docs/metrics.md of such a multiset is a function of per-image statistics and the weights, so the
resampled pixels are never built or sorted. With the distinct anomalous (positive) scores v ascending and
each image's anomaly-free (negative) scores sorted once:

- **AUROC** (image and pixel): twice the Mann-Whitney count is ``w^T M w``, M[i, j] = sum over positives p
  of image i of #(negatives of image j < s_p) + #(<= s_p): integers, bit for bit the direct value.
- **AP, F1-max**: at each v, TP_w(>= v) and FP_w(>= v) are weighted sums of per-image counts (one matrix
  product per block of thresholds), the terms those of ``ranking.py``: F1-max bit for bit, AP up to the
  order of its sum.
- **exact AUPRO**: t* (the anomaly-free score where the FPR passes the limit) by bisection on the scores'
  bit patterns; the area below it is 1/2 sum over positives p > t* of w_p / |region(p)| times
  (#_w negatives in (t*, s_p] + in (t*, s_p)), the per-image counts of the same blocks; the last
  trapezoid is ``pro.py``'s. Equal to the direct value up to float rounding.
- **cflow AUPRO**: each resample's 200 thresholds from its own minimum and maximum (``pro.py``), the FPR
  and per-region overlaps counted per image (integers), the area ``pro.py``'s.

- **pixel AUPR** (anomalib's trapezoid): the same per-value counts, each drawn value's step of recall between
  the precisions at its drawn neighbours (:class:`_AuprCarry`). Equal to the direct value up to float rounding.

Values a resample leaves undefined (e.g. it drew no anomalous pixel) are NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lightning_modules.metrics._arrays import MapLike, UndefinedMetricError, _binarise
from lightning_modules.metrics._split import _normals_needed, _region_weights
from lightning_modules.metrics.evaluation_result import IMAGE_METRICS, METRIC_NAMES
from lightning_modules.metrics.pro import (
    CFLOW_THRESHOLDS,
    _check_fpr_limit,
    _last_trapezoid,
    _legacy_area,
    _legacy_thresholds,
)

#: Elements of one (resamples x thresholds) float64 block (16 MiB): bounds the memory of every step.
_BLOCK = 1 << 21
#: The metrics a resample gets: every metric of a category.
RESAMPLED_METRICS = METRIC_NAMES


def stratified_weights(
    labels: Sequence[int] | np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_resamples, n) int64 multiplicities: each resample draws as many normal and as many anomalous
    images as the category has, with replacement, each from its own label (a stratified bootstrap)."""
    labels = np.asarray(labels).astype(bool).reshape(-1)
    n = labels.size
    flat = np.zeros(n_resamples * n, dtype=np.int64)
    rows = np.arange(n_resamples, dtype=np.int64)[:, None] * n
    for group in (np.flatnonzero(~labels), np.flatnonzero(labels)):
        if group.size:
            drawn = group[rng.integers(0, group.size, size=(n_resamples, group.size))]
            flat += np.bincount((rows + drawn).reshape(-1), minlength=n_resamples * n)
    return flat.reshape(n_resamples, n)


@dataclass
class _Ranked:
    """Scores of n units (images) split by label: each unit's negatives sorted, every positive sorted
    with its unit (and, for pixels, 1/|region| and its region)."""

    neg: list[np.ndarray]
    pos: np.ndarray
    pos_unit: np.ndarray
    pos_weight: np.ndarray | None = None
    pos_region: np.ndarray | None = None
    region_unit: np.ndarray | None = None
    unit_min: np.ndarray | None = None
    unit_max: np.ndarray | None = None

    @property
    def n_units(self) -> int:
        return len(self.neg)

    @property
    def n_neg(self) -> np.ndarray:
        return np.array([a.shape[0] for a in self.neg], dtype=np.int64)

    @property
    def n_pos(self) -> np.ndarray:
        return np.bincount(self.pos_unit, minlength=self.n_units)

    @property
    def n_regions(self) -> np.ndarray:
        return np.bincount(self.region_unit, minlength=self.n_units)

    @functools.cached_property
    def thresholds(self) -> _Thresholds:
        return _Thresholds.of(self)


@dataclass
class _Thresholds:
    """The distinct positive scores v (ascending) and, per unit, where its negatives fall among them: for a
    negative q, ``upto`` = #(v <= s_q) and ``tied_at`` the k of the negatives with s_q == v_k. Then the
    unit's #(negatives < v_k) = #(upto <= k) and #(negatives == v_k) = #(tied_at == k): counting these per
    block of thresholds costs O(negatives + thresholds), where a search per threshold and unit would not."""

    values: np.ndarray
    first: np.ndarray  # index of each value's first positive in ``pos``
    value_of: np.ndarray  # the value index of each positive
    upto: list[np.ndarray]
    tied_at: list[np.ndarray]

    @classmethod
    def of(cls, r: _Ranked) -> _Thresholds:
        values, first = np.unique(r.pos, return_index=True)
        value_of = np.repeat(np.arange(values.shape[0]), np.diff(np.append(first, r.pos.shape[0])))
        upto, tied_at = [], []
        for neg in r.neg:
            below = np.searchsorted(values, neg, side="left")
            tied = (
                values[np.minimum(below, max(values.shape[0] - 1, 0))] == neg
                if values.shape[0]
                else below < 0
            )
            upto.append(below + tied)
            tied_at.append(below[tied])
        return cls(values, first, value_of, upto, tied_at)

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(#negatives < v_k, #negatives == v_k) of every unit (rows) for the thresholds start..stop-1."""
        width = stop - start
        below = np.empty((len(self.upto), width))
        equal = np.zeros((len(self.upto), width))
        for j, (upto, tied_at) in enumerate(zip(self.upto, self.tied_at, strict=True)):
            lo, hi = np.searchsorted(upto, (start, stop), side="left")
            below[j] = lo + np.cumsum(np.bincount(upto[lo:hi] - start, minlength=width))
            if tied_at.shape[0]:
                a, b = np.searchsorted(tied_at, (start, stop), side="left")
                if b > a:
                    equal[j] = np.bincount(tied_at[a:b] - start, minlength=width)
        return below, equal


def _ranked_images(scores: np.ndarray, labels: np.ndarray) -> _Ranked:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels).astype(bool).reshape(-1)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    neg = [scores[i : i + 1] if not positive[i] else scores[:0] for i in range(scores.size)]
    units = np.flatnonzero(positive)
    order = np.argsort(scores[units], kind="stable")
    return _Ranked(neg, scores[units][order], units[order])


def _numpy(x: MapLike) -> np.ndarray:
    """A map or mask as numpy (16-bit float tensors as float32, which holds them exactly)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()
    return np.asarray(x)


def _ranked_pixels(maps: Sequence[MapLike], masks: Sequence[MapLike]) -> _Ranked:
    """The split of ``_split.py``, kept per image: float32 scores (float64 where a map is float64)."""
    arrays = [_numpy(m) for m in maps]
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32
    neg, pos, unit, weight, region, region_unit = [], [], [], [], [], []
    lows, highs = [], []
    n_regions = 0
    for i, (m, g) in enumerate(zip(arrays, masks, strict=True)):
        g = _binarise(_numpy(g))
        if tuple(m.shape) != tuple(g.shape):
            raise ValueError(f"map {i} has shape {tuple(m.shape)} but its mask has shape {tuple(g.shape)}")
        m = m.astype(dtype, copy=False)
        if np.isnan(m).any():
            raise ValueError("anomaly maps contain NaN")
        neg.append(np.sort(m[~g]))
        lows.append(m.min())
        highs.append(m.max())
        if g.any():
            w, sizes, labels = _region_weights(g, tuple(g.shape))
            pos.append(m[g])
            unit.append(np.full(w.shape[0], i, dtype=np.int64))
            weight.append(w)
            region.append(labels + n_regions)
            region_unit.append(np.full(sizes.shape[0], i, dtype=np.int64))
            n_regions += sizes.shape[0]
    if not pos:
        return _Ranked(neg, np.zeros(0, dtype), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64),
                       np.zeros(0, np.int64), np.array(lows, dtype), np.array(highs, dtype))  # fmt: skip
    values = np.concatenate(pos)
    order = np.argsort(values, kind="stable")
    return _Ranked(
        neg,
        values[order],
        np.concatenate(unit)[order],
        np.concatenate(weight)[order],
        np.concatenate(region)[order],
        np.concatenate(region_unit),
        np.array(lows, dtype),
        np.array(highs, dtype),
    )


def _count_below(r: _Ranked, weights: np.ndarray, t: np.ndarray, right: bool) -> np.ndarray:
    """Per resample b: the weighted number of negatives < t[b] (<= with ``right``)."""
    side = "right" if right else "left"
    total = np.zeros(weights.shape[0], dtype=np.int64)
    for j, neg in enumerate(r.neg):
        if neg.shape[0]:
            total += weights[:, j] * np.searchsorted(neg, t, side=side)
    return total


def _kth_largest(r: _Ranked, weights: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per resample the k[b]-th largest negative of the multiset: the largest t with #_w(neg >= t) >= k[b],
    by bisection over the order-preserving integer keys of the scores' bit patterns (at most 32 or 64
    steps, each one search per image); the largest such t is always a score itself."""
    dtype = r.neg[0].dtype if r.neg else np.float32
    bits, top = (np.uint32, 0x80000000) if dtype == np.float32 else (np.uint64, 0x8000000000000000)

    def key(x: np.ndarray) -> np.ndarray:
        b = np.asarray(x, dtype=dtype).view(bits).astype(np.uint64)
        return np.where(b >= top, ~b & (2 * top - 1), b | top).astype(np.uint64)

    def value(kx: np.ndarray) -> np.ndarray:
        b = np.where(kx >= top, kx & (top - 1), ~kx & (2 * top - 1)).astype(bits)
        return b.view(dtype)

    nonempty = [a for a in r.neg if a.shape[0]]
    lo = np.full(weights.shape[0], key(min(a[0] for a in nonempty)), dtype=np.uint64)
    hi = np.full(weights.shape[0], key(max(a[-1] for a in nonempty)), dtype=np.uint64)
    n_neg = weights @ r.n_neg
    while (lo < hi).any():
        mid = lo + (hi - lo + np.uint64(1)) // np.uint64(2)
        reached = n_neg - _count_below(r, weights, value(mid), right=False) >= k
        lo = np.where(reached, mid, lo)
        hi = np.where(reached, hi, mid - np.uint64(1))
    return value(lo)


@dataclass
class _SweepResult:
    twice_u: np.ndarray  # per resample, int64: twice the Mann-Whitney count
    ap: np.ndarray
    f1_max: np.ndarray
    aupr: np.ndarray  # NaN unless asked for
    pro_area: np.ndarray  # sum over positives > t* of w rho (#(t*, s] + #(t*, s)); 0 without t*
    pro_gt: np.ndarray  # sum of w rho over positives > t*
    pro_ge: np.ndarray  # ... >= t*


def _per_value(
    wt: np.ndarray, units: np.ndarray, is_first: np.ndarray, scale: np.ndarray | None = None
) -> np.ndarray:
    """Per distinct value (rows), the weights (columns: resamples) of its positives' units, times ``scale``
    per positive: the first positive of each value gathered at once, the few tied ones added after
    (``np.add.reduceat`` along the first axis is slow in numpy)."""
    first = np.flatnonzero(is_first)
    out = wt[units[first]]
    if scale is not None:
        out *= scale[first, None]
    if first.shape[0] < units.shape[0]:
        extra = np.flatnonzero(~is_first)
        rows = wt[units[extra]]
        if scale is not None:
            rows *= scale[extra, None]
        np.add.at(out, np.cumsum(is_first)[extra] - 1, rows)
    return out


def _suffix_sums(rows: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """carry + the sum of rows[k:] for every k, row by row (``np.cumsum`` along the first axis strides
    across memory and is ~20x slower)."""
    out = np.empty_like(rows)
    np.add(rows[-1], carry, out=out[-1])
    for k in range(rows.shape[0] - 2, -1, -1):
        np.add(rows[k], out[k + 1], out=out[k])
    return out


class _AuprCarry:
    """The trapezoidal AUPR (``ranking._aupr_from_stats``) of every resample along the sweep. A resample's
    distinct positive scores are those it draws (weighted count > 0): each one's step of recall runs from the
    precision at its next higher drawn value (1 for the highest) to the precision at the lowest threshold
    above its next lower drawn value, whose negatives > that value are known only when the sweep reaches it.
    So each drawn value adds its first half at once and its predecessor's second half, and the last drawn
    value of a block is carried into the next (lower) block."""

    def __init__(self, n_resamples: int) -> None:
        self.precision = np.ones(n_resamples)  # at the last drawn value above (1: none yet)
        self.count = np.zeros(n_resamples)  # its positives (0: none yet)
        self.tp = np.zeros(n_resamples)  # its positives >= it
        self.area = np.zeros(n_resamples)  # twice the area so far, times the resample's positives

    def block(self, count_w: np.ndarray, tp_ge: np.ndarray, precision: np.ndarray, gt_w: np.ndarray) -> None:
        """One block of values, rows ascending (the sweep's order): ``gt_w`` the negatives > each value."""
        count, tp, prec, gt = count_w[::-1], tp_ge[::-1], precision[::-1], gt_w[::-1]  # highest first
        drawn = count > 0
        rows, cols = np.arange(count.shape[0])[:, None], np.arange(count.shape[1])[None, :]
        last = np.maximum.accumulate(np.where(drawn, rows, -1), axis=0)  # latest drawn row so far
        before = np.vstack([np.full((1, count.shape[1]), -1), last[:-1]])  # ... strictly above each row
        at = np.maximum(before, 0)
        previous_precision = np.where(before >= 0, prec[at, cols], self.precision)
        previous_count = np.where(before >= 0, count[at, cols], self.count)
        previous_tp = np.where(before >= 0, tp[at, cols], self.tp)
        first_half = np.where(drawn, count * previous_precision, 0.0)
        pending = drawn & (previous_count > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            second_half = np.where(pending, previous_count * previous_tp / (previous_tp + gt), 0.0)
        self.area += np.sum(first_half, axis=0) + np.sum(second_half, axis=0)
        final = last[-1]
        found = final >= 0
        at_final = np.maximum(final, 0), cols[0]
        self.precision = np.where(found, prec[at_final], self.precision)
        self.count = np.where(found, count[at_final], self.count)
        self.tp = np.where(found, tp[at_final], self.tp)

    def result(self, n_pos_w: np.ndarray, n_neg_w: np.ndarray) -> np.ndarray:
        """The lowest drawn value's second half (its lowest threshold is the lowest score: every negative)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            last = np.where(self.count > 0, self.count * self.tp / (self.tp + n_neg_w), 0.0)
            return (self.area + last) / (2.0 * n_pos_w)


def _sweep(
    r: _Ranked, weights: np.ndarray, tstar: np.ndarray | None, f1: bool, aupr: bool = False
) -> _SweepResult:
    """One pass over the distinct positive scores, highest first, in blocks of thresholds x resamples
    (thresholds first: the sums along them run over contiguous rows): the AUROC matrix, AP (and F1-max,
    the AUPR) of every resample, and with ``tstar`` the AUPRO sums above each resample's t*."""
    n, n_resamples = r.n_units, weights.shape[0]
    th = r.thresholds
    n_values = th.values.shape[0]
    ends = np.append(th.first[1:], r.pos.shape[0])
    n_neg = r.n_neg
    n_pos_w = (weights @ r.n_pos).astype(np.float64)
    n_neg_w = (weights @ n_neg).astype(np.float64)
    too_many = 2 * int(r.n_pos.max(initial=0)) * int(n_neg.max(initial=0)) >= 2**53
    if too_many or 2 * n_pos_w.max(initial=0) * n_neg_w.max(initial=0) >= 2**62:
        raise ValueError(
            "too many pixels for exact integer pair counts (float64 per image, int64 per resample)"
        )
    # Weighted counts are integers: float32 holds them (and their sums) exactly below 2**24.
    counts_type = np.float32 if max(n_neg_w.max(initial=0), n_pos_w.max(initial=0)) < 2**24 else np.float64
    wt = np.ascontiguousarray(weights.T, dtype=counts_type)  # (units, resamples)
    wt64 = wt.astype(np.float64)
    z = None if tstar is None else _count_below(r, weights, tstar, right=True).astype(np.float64)
    m_t = np.zeros(n * n)  # M transposed, flat: [j, i]
    pair_index = np.arange(n)[:, None] * n
    tp = np.zeros(n_resamples)
    ap, best_f1 = np.zeros(n_resamples), np.zeros(n_resamples)
    area, above, at_or_above = np.zeros(n_resamples), np.zeros(n_resamples), np.zeros(n_resamples)
    aupr_carry = _AuprCarry(n_resamples) if aupr else None
    step = max(64, _BLOCK // max(n_resamples, 1))
    for stop in range(n_values, 0, -step):
        start = max(0, stop - step)
        v = th.values[start:stop]
        p0, p1 = th.first[start], ends[stop - 1]
        units, rel = r.pos_unit[p0:p1], th.value_of[p0:p1] - start
        lt, eq = th.block(start, stop)  # (units, thresholds): negatives < v, == v
        # twice the ordered pairs of each (positive's unit i, negative's unit j): 2 #(< v) + #(== v)
        m_t += np.bincount((pair_index + units).ravel(), (2 * lt + eq)[:, rel].ravel(), minlength=n * n)
        is_first = np.diff(rel, prepend=-1) != 0  # the first positive of each distinct value
        # (thresholds, resamples), float64 from here on (integers where counts): positives at v, negatives < v
        count_w = _per_value(wt64, units, is_first)
        lt_w = (lt.T.astype(counts_type) @ wt).astype(np.float64)
        tp_ge = _suffix_sums(count_w, tp)  # positives >= v
        tp = tp_ge[0].copy()
        work = np.subtract(n_neg_w, lt_w)  # FP: negatives >= v
        work += tp_ge  # TP + FP; 0 only where TP = 0 (no term)
        if f1:
            best_f1 = np.maximum(best_f1, np.max(2.0 * tp_ge / (work + n_pos_w), axis=0))
        np.maximum(work, 1.0, out=work)
        np.divide(tp_ge, work, out=work)  # precision at v
        if aupr_carry is not None:
            le_w = lt_w + (eq.T.astype(counts_type) @ wt).astype(np.float64)  # negatives <= v
            aupr_carry.block(count_w, tp_ge, work, n_neg_w - le_w)
        work *= count_w
        ap += np.sum(work, axis=0)
        if tstar is not None and v[-1] >= tstar.min():
            if is_first.all():  # one positive per value (continuous maps): its 1/|region| times its count
                rho_w = count_w * r.pos_weight[p0:p1, None]
            else:
                rho_w = _per_value(wt64, units, is_first, r.pos_weight[p0:p1])
            if v[0] <= tstar.max():  # some resamples' t* fall in this block
                at_or_above += np.sum(np.where(v[:, None] >= tstar, rho_w, 0.0), axis=0)
                rho_w[v[:, None] <= tstar] = 0.0
                above += np.sum(rho_w, axis=0)
            else:  # every v of the block lies above every t*
                block_sum = np.sum(rho_w, axis=0)
                above += block_sum
                at_or_above += block_sum
            # #_w negatives in (t*, v] plus in (t*, v): exact integers before the one product
            lt_w -= z
            lt_w *= 2.0
            ties = np.flatnonzero(eq.any(axis=0))
            if ties.shape[0]:
                lt_w[ties] += (eq[:, ties].T.astype(counts_type) @ wt).astype(np.float64)
            lt_w *= rho_w
            area += np.sum(lt_w, axis=0)
    m_int = np.rint(m_t.reshape(n, n).T).astype(np.int64)
    twice_u = np.einsum("bi,bi->b", weights @ m_int, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = ap / n_pos_w
    aupr_values = (
        aupr_carry.result(n_pos_w, n_neg_w) if aupr_carry is not None else np.full(n_resamples, np.nan)
    )
    return _SweepResult(twice_u, ap, best_f1, aupr_values, area, above, at_or_above)


def _cflow(r: _Ranked, weights: np.ndarray, fpr_limit: float) -> np.ndarray:
    """The cflow-style AUPRO of every resample: ``pro.py``'s thresholds from the resample's minimum and
    maximum score (few distinct pairs: the resamples that share one share its counts), FPR and per-region
    overlaps counted with searches in each image's and region's sorted scores."""
    out = np.full(weights.shape[0], np.nan)
    n_neg_w = (weights @ r.n_neg).astype(np.float64)
    n_regions_w = (weights @ r.n_regions).astype(np.float64)
    # members of each region by (region, rank among all positives): #(region <= t) by one search
    n_pos = r.pos.shape[0]
    members = np.lexsort((np.arange(n_pos), r.pos_region))
    keys = r.pos_region[members] * (n_pos + 1) + members
    region_start = np.searchsorted(keys, np.arange(r.region_unit.shape[0] + 1) * (n_pos + 1))
    sizes = np.diff(region_start)
    drawn = weights > 0
    lows = np.where(drawn, r.unit_min[None, :], np.inf).min(axis=1)
    highs = np.where(drawn, r.unit_max[None, :], -np.inf).max(axis=1)
    valid = (n_neg_w > 0) & (n_regions_w > 0)
    pairs, pair_of = np.unique(np.stack([lows, highs], axis=1)[valid], axis=0, return_inverse=True)
    rows_of = np.flatnonzero(valid)
    region_weights = weights[:, r.region_unit].astype(np.float64)
    for index, (low, high) in enumerate(pairs):
        try:
            th = _legacy_thresholds(float(low), float(high), r.unit_min.dtype.type, CFLOW_THRESHOLDS)
        except UndefinedMetricError:
            continue
        rows = rows_of[pair_of.reshape(-1) == index]
        neg_le = np.stack([np.searchsorted(neg, th, side="right") for neg in r.neg]).astype(np.float64)
        rank = np.searchsorted(r.pos, th, side="right")  # positives <= t
        needles = (np.arange(sizes.shape[0])[:, None] * (n_pos + 1) + rank[None, :]).ravel()
        inside = np.searchsorted(keys, needles).reshape(sizes.shape[0], -1) - region_start[:-1, None]
        overlap = (sizes[:, None] - inside) / sizes[:, None]  # per region and threshold: share of pixels > t
        fprs = (n_neg_w[rows, None] - weights[rows] @ neg_le) / n_neg_w[rows, None]
        pros = (region_weights[rows] @ overlap) / n_regions_w[rows, None]
        for k, row in enumerate(rows):
            try:
                out[row] = _legacy_area(fprs[k], pros[k], fpr_limit)
            except UndefinedMetricError:
                continue
    return out


class ResampledCategory:
    """One category's test images, prepared once; :meth:`metrics` gives every metric of any resamples.

    ``image_scores``/``labels``: one per image (float64 scores, as the evaluator keeps them). ``maps``/
    ``masks``: per image its map and mask, or None for an image without pixel ground truth (left out of
    the pixel metrics, as the evaluator does); both None for image metrics only.
    """

    def __init__(
        self,
        image_scores: Sequence[float] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        maps: Sequence[MapLike | None] | None = None,
        masks: Sequence[MapLike | None] | None = None,
        fpr_limit: float = 0.3,
        metrics: Sequence[str] = RESAMPLED_METRICS,
    ) -> None:
        unknown = [m for m in metrics if m not in RESAMPLED_METRICS]
        if unknown:
            raise ValueError(f"metrics {unknown} are not resampled; choose from {RESAMPLED_METRICS}")
        self.metric_names = tuple(metrics)
        self.fpr_limit = _check_fpr_limit(fpr_limit)
        self.labels = np.asarray(labels).astype(np.int64).reshape(-1)
        self.n_images = self.labels.shape[0]
        self.images = _ranked_images(np.asarray(image_scores), self.labels)
        self.pixel_images = np.zeros(0, dtype=np.int64)
        self.pixels: _Ranked | None = None
        if maps is not None and any(m is not None for m in maps):
            if masks is None or len(masks) != len(maps) or len(maps) != self.n_images:
                raise ValueError("maps and masks need one entry (or None) per image")
            with_gt = [
                i for i, (m, g) in enumerate(zip(maps, masks, strict=True)) if m is not None and g is not None
            ]
            self.pixel_images = np.array(with_gt, dtype=np.int64)
            self.pixels = _ranked_pixels([maps[i] for i in with_gt], [masks[i] for i in with_gt])

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of each resample (row of ``weights``: how often each image is drawn), NaN where
        the resample leaves it undefined."""
        weights = np.asarray(weights, dtype=np.int64)
        if weights.ndim != 2 or weights.shape[1] != self.n_images:
            raise ValueError(f"weights must be (resamples, {self.n_images}); got {weights.shape}")
        out = {m: np.full(weights.shape[0], np.nan) for m in self.metric_names}
        if any(m in IMAGE_METRICS for m in self.metric_names):
            image = _sweep(self.images, weights, None, f1=True)
            self._ranking(out, "image", image, weights @ self.images.n_pos, weights @ self.images.n_neg)
            if "image_f1_max" in out:
                defined = (weights @ self.images.n_pos > 0) & (weights @ self.images.n_neg > 0)
                out["image_f1_max"] = np.where(defined, image.f1_max, np.nan)
        if self.pixels is not None and set(self.metric_names) - set(IMAGE_METRICS):
            self._pixel_metrics(out, weights[:, self.pixel_images])
        return {m: out[m] for m in self.metric_names}

    def _ranking(
        self, out: dict, level: str, sweep: _SweepResult, n_pos: np.ndarray, n_neg: np.ndarray
    ) -> None:
        for b in np.flatnonzero((n_pos > 0) & (n_neg > 0)):
            if f"{level}_auroc" in out:  # integers, as ranking.py: the correctly rounded ratio
                out[f"{level}_auroc"][b] = int(sweep.twice_u[b]) / (2 * int(n_pos[b]) * int(n_neg[b]))
            if f"{level}_ap" in out:
                out[f"{level}_ap"][b] = sweep.ap[b]
            if f"{level}_aupr" in out:
                out[f"{level}_aupr"][b] = sweep.aupr[b]

    def _pixel_metrics(self, out: dict, weights: np.ndarray) -> None:
        r = self.pixels
        n_neg, n_regions = weights @ r.n_neg, weights @ r.n_regions
        tstar = None
        pro_ok = (n_neg > 0) & (n_regions > 0)
        if "aupro" in out and pro_ok.any():
            need = np.array([_normals_needed(int(n), self.fpr_limit) if n else 1 for n in n_neg])
            tstar = np.where(pro_ok, _kth_largest(r, weights, need), np.inf).astype(r.pos.dtype)
        sweep = _sweep(r, weights, tstar, f1=False, aupr="pixel_aupr" in out)
        self._ranking(out, "pixel", sweep, weights @ r.n_pos, n_neg)
        if tstar is not None:
            n_ge = n_neg - _count_below(r, weights, tstar, right=False)
            n_gt = n_neg - _count_below(r, weights, tstar, right=True)
            for b in np.flatnonzero(pro_ok):
                area = 0.5 * sweep.pro_area[b] / (n_neg[b] * n_regions[b])
                x0, x1 = n_gt[b] / n_neg[b], n_ge[b] / n_neg[b]
                y0, y1 = sweep.pro_gt[b] / n_regions[b], sweep.pro_ge[b] / n_regions[b]
                out["aupro"][b] = (area + _last_trapezoid(x0, x1, y0, y1, self.fpr_limit)) / self.fpr_limit
        if "aupro_cflow" in out:
            out["aupro_cflow"] = _cflow(r, weights, self.fpr_limit)
