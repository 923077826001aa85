"""Exact anomaly-detection metrics as plain functions (definitions: docs/metrics.md): the public entry points,
and :func:`pixel_metrics`, which computes every pixel metric from one split and one sort.

Everything is exact with ties (every distinct score is a threshold) and avoids the copies that make naive
implementations run out of memory on 10^8-10^9 pixels. The pieces, one module per concept:

- :mod:`._split`: scores are split once into anomaly-free (``neg``) and anomalous (``pos``) pixels; on large
  inputs a sampled floor lets the split copy only the anomaly-free pixels AUPRO needs
  (``_normal_score_floor``; a floor that keeps too few is detected and the split redone);
- :mod:`.ranking`: AUROC/AP/F1 need only the two *value-sorted* arrays plus ``searchsorted`` (no argsort,
  no int64 index array of all pixels);
- :mod:`.pro`: AUPRO sorts only the anomaly-free pixels above the FPR limit; the area is then one float64
  dot product over the anomalous pixels (``_aupro_from_split``); also the cflow-style AUPRO;
- :mod:`._histogram`: 16-bit scores (``eval.pixel_score_dtype=float16`` storage, or bfloat16 maps) take one
  of 65,536 bit patterns, so per-pattern counts (``np.bincount``, O(P)) replace the split and the sort;
- :mod:`._arrays`: the numpy/torch backends. CPU inputs run on numpy (its SIMD sort/partition are ~10x
  faster than ``torch.sort`` on CPU) with the work numpy runs without the GIL spread over
  ``torch.get_num_threads()`` threads; CUDA tensors stay on their device and use torch.

Undefined metrics raise :class:`UndefinedMetricError` with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_modules.metrics._arrays import MapsLike, UndefinedMetricError
from lightning_modules.metrics._histogram import (
    _format16,
    _histogram_pixels,
    _rank_stats_from_histogram,
    _ValueHistogram,
)
from lightning_modules.metrics._split import _paired_maps, _PixelSplit, _sort_split, _split_pixels
from lightning_modules.metrics.pro import (
    CFLOW_THRESHOLDS,
    _aupro_from_histogram,
    _aupro_from_split,
    _check_fpr_limit,
    _legacy_from_split,
    aupro,
    legacy_cflow_aupro,
    pro_curve,
    trapezoid_area,
)
from lightning_modules.metrics.ranking import (
    _ap_from_stats,
    _aupr_from_stats,
    _auroc_from_stats,
    _rank_stats,
    _RankStats,
    _require_both,
    binary_aupr,
    binary_auroc,
    binary_average_precision,
    f1_max,
)

__all__ = [
    "CFLOW_THRESHOLDS",
    "PIXEL_METRICS",
    "UndefinedMetricError",
    "aupro",
    "binary_aupr",
    "binary_auroc",
    "binary_average_precision",
    "f1_max",
    "legacy_cflow_aupro",
    "pixel_metrics",
    "pro_curve",
    "trapezoid_area",
]

#: The pixel metrics :func:`pixel_metrics` computes: AP (sklearn's) and AUPR (anomalib's trapezoid, the
#: "pixel AUPR" of AdaptCLIP's papers), exact AUPRO and the published cflow-style AUPRO side by side.
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_aupr", "aupro", "aupro_cflow")
RANKING_METRICS = ("pixel_auroc", "pixel_ap", "pixel_aupr")  # from one sort's rank statistics


def pixel_metrics(
    maps: MapsLike,
    masks: MapsLike,
    fpr_limit: float = 0.3,
    metrics: Sequence[str] = PIXEL_METRICS,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Pixel AUROC, pixel AP, the exact AUPRO and the cflow-style AUPRO (``aupro_cflow``) sharing one split
    and one sort of the anomaly-free pixels (or, for 16-bit scores without ``aupro_cflow``, one histogram).

    Returns (values, reasons): an undefined metric has value None and its reason in ``reasons``.
    """
    values, reasons, _, _ = _pixel_metrics(maps, masks, fpr_limit, metrics)
    return values, reasons


def _pixel_metrics(
    maps: MapsLike, masks: MapsLike, fpr_limit: float, metrics: Sequence[str]
) -> tuple[dict[str, float | None], dict[str, str], _PixelSplit | _ValueHistogram, _RankStats | None]:
    """:func:`pixel_metrics`, plus the split (or histogram) it read and its rank statistics (None when not
    computed), so that the curves (:func:`~.curves.pixel_metrics_and_curves`) need no second split and sort."""
    fpr_limit = _check_fpr_limit(fpr_limit)
    unknown = [m for m in metrics if m not in PIXEL_METRICS]
    if unknown:
        raise ValueError(f"unknown pixel metrics {unknown}; choose from {PIXEL_METRICS}")
    want_pro = "aupro" in metrics
    want_cflow = "aupro_cflow" in metrics
    ranking = any(m in metrics for m in RANKING_METRICS)
    map_list, mask_list = _paired_maps(maps, masks)
    source: _PixelSplit | _ValueHistogram
    if _format16(map_list) and not want_cflow:
        source = _histogram_pixels(map_list, mask_list)
        exact_aupro, rank_stats = _aupro_from_histogram, _rank_stats_from_histogram
    else:
        full = ranking or want_cflow
        source = _split_pixels(
            map_list,
            mask_list,
            regions=want_pro or want_cflow,
            region_ids=want_cflow,
            aupro_fpr_limit=None if full else fpr_limit,
        )
        exact_aupro, rank_stats = _aupro_from_split, _rank_stats
        if full and source.n_pos > 0 and source.n_neg > 0:
            _sort_split(source)  # the full sort serves AUROC/AP and the cflow thresholds; AUPRO reads its top
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> None:
        try:
            values[name] = float(fn())
        except UndefinedMetricError as err:
            values[name] = None
            reasons[name] = str(err)

    if want_pro:
        attempt("aupro", lambda: exact_aupro(source, fpr_limit))
    if want_cflow:
        attempt("aupro_cflow", lambda: _legacy_from_split(source, fpr_limit, CFLOW_THRESHOLDS))
    if ranking:
        stats: list[_RankStats] = []

        def get_stats() -> _RankStats:
            if not stats:
                _require_both(source, negatives="anomaly-free pixels", positives="anomalous pixels")
                stats.append(rank_stats(source))
            return stats[0]

        if "pixel_auroc" in metrics:
            attempt("pixel_auroc", lambda: _auroc_from_stats(get_stats()))
        if "pixel_ap" in metrics:
            attempt("pixel_ap", lambda: _ap_from_stats(get_stats()))
        if "pixel_aupr" in metrics:
            attempt("pixel_aupr", lambda: _aupr_from_stats(get_stats()))
        return values, reasons, source, stats[0] if stats else None
    return values, reasons, source, None
