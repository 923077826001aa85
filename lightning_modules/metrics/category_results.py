"""One category's results from its de-duplicated samples, apart from the state keeping of
:class:`~.evaluator.AnomalyEvaluator`: the image metrics, and the pixel metrics with the curves from one
split of the pixels (:func:`~.curves.pixel_metrics_and_curves`), or why they are missing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from lightning_modules.metrics._split import _split_scores
from lightning_modules.metrics.curves import (
    CurveSet,
    PixelCurves,
    curves_of_category,
    pixel_metrics_and_curves,
)
from lightning_modules.metrics.evaluation_result import IMAGE_METRICS
from lightning_modules.metrics.functional import PIXEL_METRICS, pixel_metrics
from lightning_modules.metrics.ranking import (
    _ap_from_stats,
    _auroc_from_stats,
    _f1_max_from_stats,
    _rank_stats,
)

#: A category's pixel metric values, the reasons of the undefined ones and notes for the result.
PixelResults = tuple[dict[str, float | None], dict[str, str], list[str]]


def category_pixel_results(
    name: str,
    scores: Tensor,
    labels: Tensor,
    pixel_gt: np.ndarray,
    maps: Sequence[Tensor],
    masks: Sequence[Tensor],
    *,
    enabled: bool,
    fpr_limit: float,
    keep_curves: bool,
    curve_points: int | None,
) -> tuple[PixelResults, CurveSet | None]:
    """Pixel (values, reasons, notes) of one category and, with ``keep_curves``, its curves (thinned to
    ``curve_points``), the pixel ones from the same split as the metrics. ``pixel_gt`` per sample: 0 no
    map, 1 a map but no mask, 2 both; ``maps``/``masks`` are those of the samples with both."""
    values: dict[str, float | None] = dict.fromkeys(PIXEL_METRICS)
    notes: list[str] = []
    pixel: PixelCurves | None = None
    if not enabled:
        reasons = dict.fromkeys(PIXEL_METRICS, "pixel metrics disabled (pixel_metrics=False)")
    elif pixel_gt.size == 0:
        reasons = dict.fromkeys(PIXEL_METRICS, "no samples")
    elif not maps:
        why = (
            "no anomaly maps were given"
            if bool((pixel_gt == 0).all())
            else "no pixel ground truth (no sample has a mask)"
        )
        reasons = dict.fromkeys(PIXEL_METRICS, why)
    else:
        if int((pixel_gt != 2).sum()):
            notes.append(
                f"{name}: {int((pixel_gt != 2).sum())} of {pixel_gt.size} samples have no map or no mask "
                "and are left out of the pixel metrics"
            )
        if keep_curves:
            pv, reasons, pixel = pixel_metrics_and_curves(
                maps, masks, fpr_limit=fpr_limit, pro_points=curve_points
            )
        else:
            pv, reasons = pixel_metrics(maps, masks, fpr_limit=fpr_limit)
        values.update(pv)
    if not keep_curves:
        return (values, reasons, notes), None
    curves = curves_of_category(scores, labels, pixel)
    # the PRO curve came thinned (pixel_metrics_and_curves' pro_points)
    return (values, reasons, notes), curves if curve_points is None else curves.thinned(
        curve_points, thin_pro=False
    )


def image_metrics(
    scores: Tensor, labels: Tensor, values: dict[str, float | None], reasons: dict[str, str]
) -> None:
    """Image AUROC, AP and F1-max into ``values`` from one split and one sort, or their reason."""
    n = int(scores.shape[0])
    n_pos = int(labels.sum())
    if n == 0:
        why = "no samples"
    elif n_pos == n:
        why = "no normal images (only one label present)"
    elif n_pos == 0:
        why = "no anomalous images (only one label present)"
    else:
        stats = _rank_stats(_split_scores(scores, labels))
        values["image_auroc"] = _auroc_from_stats(stats)
        values["image_ap"] = _ap_from_stats(stats)
        values["image_f1_max"] = _f1_max_from_stats(stats)
        return
    for m in IMAGE_METRICS:
        reasons[m] = why
