"""Results files of a run: ``results.json`` (everything) and ``results.csv`` (one row per category).

Files are rewritten atomically after every evaluated target, so a failure on a later target never loses
the results already computed. :func:`atomic_write` is how every file of a run folder is written.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
from pathlib import Path
from typing import Any

from datamodules.atomic_io import atomic_write_text
from lightning_modules.metrics.evaluation_result import (
    METRIC_NAMES,
    SAMPLE_METRICS,
    SPRO_METRICS,
    as_percent,
    aupro_gap_warning,
)

#: Every result has both AUPROs: ``aupro`` (exact) and ``aupro_cflow`` (the published 200-threshold one).
METRICS = METRIC_NAMES
#: Columns only targets whose data allows them have (Real-IAD's sample level, sPRO); order of the tables.
EXTRA_METRICS = (*SAMPLE_METRICS, *SPRO_METRICS)
#: Why a category's two AUPROs disagree (docs/metrics.md): a key where they do, a column after the metrics.
WARNING_COLUMN = "aupro_warning"
CSV_COLUMNS = ("dataset", "category", "n_normal", "n_anomalous", *METRICS, WARNING_COLUMN)
MEAN_ROW = "mean"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def target_payload(
    dataset: str,
    counts: dict[str, dict[str, int]],
    evaluation: Any,
    details: dict[str, Any],
    thresholds: dict[str, dict[str, float | None]] | None = None,
) -> dict[str, Any]:
    """JSON-ready results of one evaluated dataset; ``evaluation`` is an ``EvaluationResult``;
    ``thresholds``: per category the F1-optimal ``{"image": t, "pixel": t}`` (score >= t is anomalous),
    what ``zsad predict --threshold-from RUN`` reads. A category whose two AUPROs are more than
    ``AUPRO_GAP_MARGIN`` apart carries ``aupro_warning``, the one-line reason."""
    names = (*METRICS, *getattr(evaluation, "extra_metrics", ()))
    categories = {}
    for category, metrics in evaluation.per_category.items():
        values = {m: _clean(metrics.get(m)) for m in names}
        warning = aupro_gap_warning(values)
        categories[category] = {
            "n_normal": counts.get(category, {}).get("normal", 0),
            "n_anomalous": counts.get(category, {}).get("anomalous", 0),
            **values,
            **({WARNING_COLUMN: warning} if warning else {}),
            **({"f1_thresholds": thresholds.get(category)} if thresholds is not None else {}),
        }
    return {
        "dataset": dataset,
        **details,
        "categories": categories,
        "mean": {m: _clean(evaluation.mean.get(m)) for m in names},
        "missing": evaluation.missing,
        "fpr_limit": evaluation.fpr_limit,
        "pixel_score_dtype": evaluation.pixel_score_dtype,
    }


def _extra_columns(results: dict[str, Any]) -> tuple[str, ...]:
    """The extra metrics (:data:`EXTRA_METRICS`) any target of ``results`` has, in their fixed order."""
    present = {m for target in results["targets"].values() for m in target.get("mean", {})}
    return tuple(m for m in EXTRA_METRICS if m in present)


def csv_text(results: dict[str, Any]) -> str:
    """One row per category; the extra columns appear only where a target has them."""
    columns = (*CSV_COLUMNS, *_extra_columns(results))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for key, target in results["targets"].items():
        rows = [{"category": c, **v} for c, v in target["categories"].items()]
        n_normal = sum(v.get("n_normal", 0) for v in target["categories"].values())
        n_anomalous = sum(v.get("n_anomalous", 0) for v in target["categories"].values())
        rows.append(
            {"category": MEAN_ROW, "n_normal": n_normal, "n_anomalous": n_anomalous, **target["mean"]}
        )
        for row in rows:
            writer.writerow({"dataset": key, **{c: row.get(c) for c in columns if c != "dataset"}})
    return buffer.getvalue()


def _json_value(value: Any) -> Any:
    """Config choices (Enums, e.g. ``eval.pixel_score_dtype``) are written as their values."""
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_results(run_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    json_path, csv_path = run_dir / "results.json", run_dir / "results.csv"
    atomic_write_text(json_path, json.dumps(results, indent=2, sort_keys=False, default=_json_value) + "\n")
    atomic_write_text(csv_path, csv_text(results))
    return json_path, csv_path


EXTRA_HEADERS = {"sample_auroc": "S AUROC", "sample_ap": "S AP", "sample_f1_max": "S F1", "spro": "sPRO"}


def protocol_line(results: dict[str, Any]) -> str | None:
    """``protocol: zero-shot`` or ``protocol: 4-shot, mean over 5 draws (...)``: what the table's numbers
    are; None for results of an older version (no ``protocol``)."""
    protocol = results.get("protocol")
    if not protocol:
        return None
    if protocol.get("name") != "few_shot":
        return f"protocol: {protocol.get('label', protocol.get('name'))}"
    done = sorted({t.get("n_draws", 0) for t in results["targets"].values()})
    shown = "/".join(map(str, done)) or "0"
    return (
        f"protocol: {protocol['shots']}-shot, mean over {shown} of {protocol['draws']} reference draws "
        "(each draw's numbers and reference files: results.json 'draws')"
    )


def format_table(results: dict[str, Any]) -> str:
    """Per-category table in percent with one decimal, as papers report; '-' where undefined; the
    protocol's line first (few-shot: the numbers are means over the reference draws); a '!' after an AUPRO
    cflow that is far from the exact AUPRO, with the reason in a line below the table."""
    header = (
        "dataset",
        "category",
        "img AUROC",
        "img AP",
        "img F1",
        "px AUROC",
        "px AP",
        "px AUPR",
        "AUPRO",
        "AUPRO cflow",
    )
    extra = _extra_columns(results)
    header = (*header, *(EXTRA_HEADERS[m] for m in extra))
    lines, warnings = [], []
    for key, target in results["targets"].items():
        rows = list(target["categories"].items()) + [(MEAN_ROW, target["mean"])]
        for category, metrics in rows:
            cells = [as_percent(metrics.get(m)) for m in (*METRICS, *extra)]
            if metrics.get(WARNING_COLUMN):
                cells[METRICS.index("aupro_cflow")] += "!"
                warnings.append(f"! {key}/{category}: {metrics[WARNING_COLUMN]}")
            lines.append((key, category, *cells))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]

    def fmt(row: tuple) -> str:
        return "  ".join(
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    first = [line] if (line := protocol_line(results)) else []
    return "\n".join([*first, fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines), *warnings])
