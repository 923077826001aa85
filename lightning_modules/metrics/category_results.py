"""One category's results from its de-duplicated samples, apart from the state keeping of
:class:`~.evaluator.AnomalyEvaluator`: the image metrics, and the pixel metrics with the curves from one
split of the pixels (:func:`~.curves.pixel_metrics_and_curves`), or why they are missing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_modules.metrics._arrays import UndefinedMetricError
from lightning_modules.metrics._split import _split_scores
from lightning_modules.metrics.curves import (
    CurveSet,
    PixelCurves,
    curves_of_category,
    pixel_metrics_and_curves,
)
from lightning_modules.metrics.evaluation_result import IMAGE_METRICS, SAMPLE_METRICS
from lightning_modules.metrics.functional import PIXEL_METRICS, pixel_metrics
from lightning_modules.metrics.ranking import (
    _ap_from_stats,
    _auroc_from_stats,
    _f1_max_from_stats,
    _rank_stats,
)
from lightning_modules.metrics.spro import spro_from_parts

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
    scores: Tensor,
    labels: Tensor,
    values: dict[str, float | None],
    reasons: dict[str, str],
    names: Sequence[str] = IMAGE_METRICS,
) -> None:
    """Image AUROC, AP and F1-max into ``values`` (under ``names``) from one split and one sort, or their
    reason."""
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
        auroc, ap, f1 = names
        values[auroc] = _auroc_from_stats(stats)
        values[ap] = _ap_from_stats(stats)
        values[f1] = _f1_max_from_stats(stats)
        return
    for m in names:
        reasons[m] = why


def sample_level_metrics(
    scores: Tensor,
    labels: Tensor,
    groups: np.ndarray,
    values: dict[str, float | None],
    reasons: dict[str, str],
) -> None:
    """The image metrics over physical samples (``groups``: one id per image, -1 for an image that is a
    sample of its own): a sample scores the maximum of its views' scores and is anomalous when any view is
    (ADEval's ``max(score)``, ``max(label)``). Exact and order-free: a maximum needs no summation order."""
    groups = np.asarray(groups, dtype=np.int64)
    alone = groups < 0
    keys = groups.copy()
    keys[alone] = groups.max(initial=0) + 1 + np.arange(int(alone.sum()))  # own ids for lone images
    _, inverse = np.unique(keys, return_inverse=True)
    n = int(inverse.max()) + 1 if inverse.size else 0
    score = np.full(n, -np.inf)
    label = np.zeros(n, dtype=np.int64)
    np.maximum.at(score, inverse, np.asarray(scores, dtype=np.float64))
    np.maximum.at(label, inverse, np.asarray(labels, dtype=np.int64))
    image_metrics(torch.from_numpy(score), torch.from_numpy(label), values, reasons, SAMPLE_METRICS)


def category_spro(
    maps: Sequence[Tensor],
    masks: Sequence[Tensor],
    regions: Sequence[tuple[np.ndarray, float]],
    fpr_limit: float,
) -> tuple[float | None, str]:
    """One category's AU-sPRO (:mod:`.spro`) from its maps and masks (the anomaly-free pixels: outside
    the masks, which are the regions' union) and its regions; (None, reason) where undefined."""
    if not regions:
        return None, "no ground-truth regions with saturation rules (no defects_config.json?)"
    anomaly_free = [m[g == 0].float().cpu().numpy() for m, g in zip(maps, masks, strict=True)]
    try:
        return spro_from_parts(
            np.concatenate(anomaly_free) if anomaly_free else np.zeros(0, np.float32), regions, fpr_limit
        ), ""
    except UndefinedMetricError as error:
        return None, str(error)
