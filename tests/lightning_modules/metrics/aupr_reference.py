"""An independent reference for the pixel AUPR (shared by the metric tests)."""

from __future__ import annotations

import numpy as np


def anomalib_aupr(scores, labels) -> float:
    """anomalib's ``AUPR`` written out in float64: torchmetrics' binary PR curve (a point per distinct score,
    highest first, then reversed, plus (recall 0, precision 1)), a stable sort by recall, the trapezoid rule."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(np.int64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last sample of each distinct score
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = 1.0 + last - tps
    precision = np.r_[(tps / (tps + fps))[::-1], 1.0]
    recall = np.r_[(tps / tps[-1])[::-1], 0.0]
    by_recall = np.argsort(recall, kind="stable")
    recall, precision = recall[by_recall], precision[by_recall]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))
