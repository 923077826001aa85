"""What an evaluation returns: per-category metrics, undefined ones with a reason, and their category mean."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_modules.metrics.functional import PIXEL_METRICS

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
METRIC_NAMES = IMAGE_METRICS + PIXEL_METRICS
#: Columns a result has only where the data allows them: the image metrics over multi-view samples
#: (Real-IAD) and MVTec LOCO's AU-sPRO (datasets with region saturation rules).
SAMPLE_METRICS = ("sample_auroc", "sample_ap", "sample_f1_max")
SPRO_METRICS = ("spro",)

#: When the published 200-threshold AUPRO and the exact one differ by more than this (a fraction: 5
#: points), results flag it (docs/metrics.md, "When the two AUPROs disagree"): on maps whose scores the
#: grid resolves they stay within about 1 point; 5 points apart, the grid is too coarse for the maps.
AUPRO_GAP_MARGIN = 0.05


def as_percent(value: float | None, signed: bool = False) -> str:
    """A metric in percent with one decimal, as the papers print it (``signed``: with its sign, for
    differences); '-' when undefined, never '-0.0' or '+0.0'."""
    if value is None:
        return "-"
    text = f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    return "0.0" if text in ("-0.0", "+0.0") else text


def aupro_gap_warning(metrics: dict[str, Any]) -> str | None:
    """One line when a category's ``aupro_cflow`` and exact ``aupro`` differ by more than
    :data:`AUPRO_GAP_MARGIN` (None otherwise, or when either is undefined)."""
    exact, cflow = metrics.get("aupro"), metrics.get("aupro_cflow")
    if exact is None or cflow is None or abs(exact - cflow) <= AUPRO_GAP_MARGIN:
        return None
    return (
        f"AUPRO cflow {as_percent(cflow)} vs exact {as_percent(exact)}, more than {as_percent(AUPRO_GAP_MARGIN)} "
        "points apart: the published AUPRO's 200 evenly spaced thresholds are too coarse for these maps; "
        "trust aupro (docs/metrics.md)"
    )


@dataclass
class EvaluationResult:
    """Metrics per category (fractions in [0, 1]; None = undefined, with the reason in ``missing``) and
    their unweighted mean over the categories where each is defined (``mean_counts`` says how many)."""

    categories: list[str]
    per_category: dict[str, dict[str, float | None]]
    missing: dict[str, dict[str, str]]
    mean: dict[str, float | None]
    mean_counts: dict[str, int]
    num_images: dict[str, int] = field(default_factory=dict)
    fpr_limit: float = 0.3
    pixel_score_dtype: str = "float32"
    duplicates_dropped: int = 0
    notes: list[str] = field(default_factory=list)
    extra_metrics: list[str] = field(
        default_factory=list
    )  # columns beyond METRIC_NAMES (SAMPLE_METRICS, spro)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*METRIC_NAMES, *self.extra_metrics)

    @classmethod
    def from_categories(
        cls,
        per_category: dict[str, dict[str, float | None]],
        missing: dict[str, dict[str, str]],
        *,
        num_images: dict[str, int] | None = None,
        fpr_limit: float = 0.3,
        pixel_score_dtype: str = "float32",
        duplicates_dropped: int = 0,
        notes: Sequence[str] = (),
        extra_metrics: Sequence[str] = (),
    ) -> EvaluationResult:
        """Build a result from per-category values, computing the means (used to merge per-class runs)."""
        categories = list(per_category)
        names = (*METRIC_NAMES, *extra_metrics)
        mean: dict[str, float | None] = {}
        counts: dict[str, int] = {}
        for name in names:
            values = [v[name] for v in per_category.values() if v.get(name) is not None]
            counts[name] = len(values)
            mean[name] = math.fsum(values) / len(values) if values else None
        return cls(
            categories=categories,
            per_category={c: {n: per_category[c].get(n) for n in names} for c in categories},
            missing={c: dict(missing.get(c, {})) for c in categories},
            mean=mean,
            mean_counts=counts,
            num_images=dict(num_images or {}),
            fpr_limit=fpr_limit,
            pixel_score_dtype=pixel_score_dtype,
            duplicates_dropped=duplicates_dropped,
            notes=list(notes),
            extra_metrics=list(extra_metrics),
        )

    @classmethod
    def merge(cls, results: Sequence[EvaluationResult]) -> EvaluationResult:
        """Combine results of disjoint category sets (e.g. one evaluator per class) into one."""
        if not results:
            raise ValueError("nothing to merge")
        per_category: dict[str, dict[str, float | None]] = {}
        missing: dict[str, dict[str, str]] = {}
        num_images: dict[str, int] = {}
        for r in results:
            for c in r.categories:
                if c in per_category:
                    raise ValueError(f"category {c!r} appears in more than one result")
                per_category[c] = r.per_category[c]
                missing[c] = r.missing.get(c, {})
                if c in r.num_images:
                    num_images[c] = r.num_images[c]
        first = results[0]
        return cls.from_categories(
            per_category,
            missing,
            num_images=num_images,
            fpr_limit=first.fpr_limit,
            pixel_score_dtype=first.pixel_score_dtype,
            duplicates_dropped=sum(r.duplicates_dropped for r in results),
            notes=[n for r in results for n in r.notes],
            extra_metrics=list(dict.fromkeys(m for r in results for m in r.extra_metrics)),
        )

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per category plus a final "mean" row (for CSV/JSON writers)."""
        rows: list[dict[str, Any]] = []
        for c in self.categories:
            rows.append({"category": c, "num_images": self.num_images.get(c), **self.per_category[c]})
        total = sum(self.num_images.values()) if self.num_images else None
        rows.append({"category": "mean", "num_images": total, **self.mean})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form with everything needed to interpret the numbers."""
        return {
            "metrics": list(self.metric_names),
            "categories": self.categories,
            "per_category": self.per_category,
            "missing": self.missing,
            "mean": self.mean,
            "mean_counts": self.mean_counts,
            "num_images": self.num_images,
            "fpr_limit": self.fpr_limit,
            "pixel_score_dtype": self.pixel_score_dtype,
            "duplicates_dropped": self.duplicates_dropped,
            "notes": self.notes,
        }

    def aupro_warnings(self) -> dict[str, str]:
        """Per category whose two AUPROs disagree (:func:`aupro_gap_warning`), the one-line reason."""
        warnings = {c: aupro_gap_warning(self.per_category[c]) for c in self.categories}
        return {c: w for c, w in warnings.items() if w}

    def format_table(self, percent: bool = True) -> str:
        """Plain-text table (percent with one decimal, as the papers report); '-' marks undefined metrics."""
        header = ["category", "n", *self.metric_names]
        lines = [header]
        for row in self.to_rows():
            cells = [str(row["category"]), "" if row["num_images"] is None else str(row["num_images"])]
            for name in self.metric_names:
                v = row[name]
                cells.append(as_percent(v) if percent else ("-" if v is None else f"{v:.4f}"))
            lines.append(cells)
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
        )
