"""Exact, memory-lean, distributed anomaly-detection metrics (definitions in docs/metrics.md).

- :class:`AnomalyEvaluator`: a torchmetrics ``Metric`` that every method's test loop updates; ``compute``
  returns an :class:`EvaluationResult` (per category, missing-with-reason, unweighted category mean).
  Each category is scored and its pixels freed once complete, under DDP too (:mod:`.distributed`).
- :mod:`.curves`: the ROC, PR and PRO curves those metrics integrate and the F1-optimal thresholds
  (``AnomalyEvaluator.curves``, ``ranking_curve``, ``pixel_curves``), and ``pixel_metrics_and_curves``,
  which computes the pixel metrics and curves from one split (what the evaluator uses).
- Functional pieces: exact ``aupro``/``pro_curve`` (partial selection, float64), the biased 200-threshold
  ``legacy_cflow_aupro`` of the published tables (reported beside the exact one as ``aupro_cflow``), ``binary_auroc``,
  ``binary_average_precision`` (sklearn's step-wise AP), ``binary_aupr`` (anomalib's trapezoidal AUPR), ``f1_max``.
"""

from lightning_modules.metrics.curves import (
    CURVE_POINTS,
    CurveSet,
    RankingCurve,
    curve_set,
    f1_thresholds,
    pixel_curves,
    pixel_metrics_and_curves,
    ranking_curve,
)
from lightning_modules.metrics.evaluation_result import (
    AUPRO_GAP_MARGIN,
    IMAGE_METRICS,
    METRIC_NAMES,
    EvaluationResult,
    as_percent,
    aupro_gap_warning,
)
from lightning_modules.metrics.evaluator import PIXEL_SCORE_DTYPES, AnomalyEvaluator
from lightning_modules.metrics.functional import (
    CFLOW_THRESHOLDS,
    PIXEL_METRICS,
    UndefinedMetricError,
    aupro,
    binary_aupr,
    binary_auroc,
    binary_average_precision,
    f1_max,
    legacy_cflow_aupro,
    pixel_metrics,
    pro_curve,
    trapezoid_area,
)

__all__ = [
    "AUPRO_GAP_MARGIN",
    "CFLOW_THRESHOLDS",
    "CURVE_POINTS",
    "IMAGE_METRICS",
    "METRIC_NAMES",
    "PIXEL_METRICS",
    "PIXEL_SCORE_DTYPES",
    "AnomalyEvaluator",
    "CurveSet",
    "EvaluationResult",
    "RankingCurve",
    "UndefinedMetricError",
    "as_percent",
    "aupro",
    "aupro_gap_warning",
    "binary_auroc",
    "binary_aupr",
    "binary_average_precision",
    "curve_set",
    "f1_max",
    "f1_thresholds",
    "legacy_cflow_aupro",
    "pixel_curves",
    "pixel_metrics",
    "pixel_metrics_and_curves",
    "pro_curve",
    "ranking_curve",
    "trapezoid_area",
]
