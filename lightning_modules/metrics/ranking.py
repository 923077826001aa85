"""AUROC, AP (sklearn's step-wise definition), AUPR (anomalib's trapezoidal area under the PR curve) and
F1-max, exact with ties, from the two value-sorted arrays of a split (or the per-value counts of a 16-bit
histogram)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_modules.metrics._arrays import MapLike, UndefinedMetricError
from lightning_modules.metrics._split import _PixelSplit, _sort_split, _split_scores

if TYPE_CHECKING:
    from lightning_modules.metrics._histogram import _ValueHistogram


def _require_both(
    sp: _PixelSplit | _ValueHistogram, negatives: str = "negatives", positives: str = "positives"
) -> None:
    if sp.n_pos == 0 and sp.n_neg == 0:
        raise UndefinedMetricError("no samples")
    if sp.n_pos == 0:
        raise UndefinedMetricError(f"no {positives} (only one label present)")
    if sp.n_neg == 0:
        raise UndefinedMetricError(f"no {negatives} (only one label present)")


@dataclass
class _RankStats:
    """Per distinct positive score: how many positives have it, and positives/negatives scoring >= and <."""

    counts: np.ndarray  # int64, positives with exactly this score
    tp_ge: np.ndarray  # int64, positives with score >= value
    neg_lt: np.ndarray  # int64, negatives with score < value
    neg_le: np.ndarray  # int64, negatives with score <= value
    n_pos: int
    n_neg: int
    #: The distinct positive scores themselves (ascending, the backend's array): the thresholds of the curves.
    values: Any = None


def _rank_stats(sp: _PixelSplit) -> _RankStats:
    _sort_split(sp)
    ops = sp.ops
    values, counts = ops.unique_counts(sp.pos)
    lt = ops.to_numpy(ops.searchsorted(sp.neg, values, right=False, sorted_needles=True))
    le = ops.to_numpy(ops.searchsorted(sp.neg, values, right=True, sorted_needles=True))
    counts = ops.to_numpy(counts).astype(np.int64, copy=False)
    tp_ge = np.cumsum(counts[::-1])[::-1]
    return _RankStats(counts, tp_ge, lt, le, sp.n_pos, sp.n_neg, values)


def _auroc_from_stats(st: _RankStats) -> float:
    # Mann-Whitney U with ties counted half: sum over positives of (#neg < s) + (#neg == s)/2.
    # Integer arithmetic is exact while n_pos * n_neg < 2**61 (~1.5e9 pixels per class side).
    if st.n_pos * st.n_neg < 2**61:
        twice_u = int(np.dot(st.counts, st.neg_lt + st.neg_le))
        return twice_u / (2 * st.n_pos * st.n_neg)
    u = np.sum(st.counts.astype(np.float64) * (st.neg_lt + st.neg_le))
    return float(u / (2.0 * st.n_pos * st.n_neg))


def _ap_from_stats(st: _RankStats) -> float:
    # sklearn's step-wise AP: sum over thresholds of (recall increase) * precision; recall only increases at
    # scores that positives have, where precision = tp(>=s) / (tp(>=s) + fp(>=s)).
    fp_ge = st.n_neg - st.neg_lt
    precision = st.tp_ge / (st.tp_ge + fp_ge)
    return float(np.sum(st.counts * precision) / st.n_pos)  # np.sum: deterministic, unlike BLAS dot


def _aupr_from_stats(st: _RankStats) -> float:
    # anomalib's AUPR (AdaptCLIP's "AP" / pixel AUPR): torchmetrics' PR curve at every distinct score plus the
    # point (recall 0, precision 1), sorted by recall (stable) and integrated by the trapezoid rule. Recall is
    # flat between two distinct positive values, so only its steps count: from the precision at the next higher
    # positive value (1 above the highest) to the precision at the lowest threshold with this recall, just
    # above the next lower positive value (the lowest score of all for the lowest positive value).
    at_value = st.tp_ge / (st.tp_ge + st.n_neg - st.neg_lt)
    start = np.append(at_value[1:], 1.0)
    lowest = st.tp_ge / (st.tp_ge + st.n_neg - np.concatenate(([0], st.neg_le[:-1])))
    return float(np.sum(st.counts * (start + lowest)) / (2 * st.n_pos))


def _f1_max_from_stats(st: _RankStats) -> float:
    fp_ge = st.n_neg - st.neg_lt
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + n_pos); its maximum lies at a score positives have.
    f1 = 2.0 * st.tp_ge / (st.tp_ge + fp_ge + st.n_pos)
    return float(f1.max())


def binary_auroc(scores: MapLike, labels: MapLike) -> float:
    """Exact ROC AUC (ties count half, as ``sklearn.metrics.roc_auc_score``); scores need not be probabilities."""
    sp = _split_scores(scores, labels)
    _require_both(sp)
    return _auroc_from_stats(_rank_stats(sp))


def binary_average_precision(scores: MapLike, labels: MapLike) -> float:
    """Average precision as ``sklearn.metrics.average_precision_score`` (step-wise, not a trapezoid)."""
    sp = _split_scores(scores, labels)
    _require_both(sp)
    return _ap_from_stats(_rank_stats(sp))


def binary_aupr(scores: MapLike, labels: MapLike) -> float:
    """Area under the precision-recall curve by the trapezoid rule, as anomalib's ``AUPR`` (torchmetrics'
    ``BinaryPrecisionRecallCurve`` and ``auc(recall, precision, reorder=True)``); not sklearn's AP."""
    sp = _split_scores(scores, labels)
    _require_both(sp)
    return _aupr_from_stats(_rank_stats(sp))


def f1_max(scores: MapLike, labels: MapLike) -> float:
    """The best F1 over all thresholds (every distinct score)."""
    sp = _split_scores(scores, labels)
    _require_both(sp)
    return _f1_max_from_stats(_rank_stats(sp))
