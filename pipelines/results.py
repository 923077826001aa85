"""Results files of a run: ``results.json`` (everything) and ``results.csv`` (one row per category).

Files are rewritten atomically after every evaluated target, so a failure on a later target never loses
the results already computed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro")
CSV_COLUMNS = ("dataset", "category", "n_normal", "n_anomalous", *METRICS)
MEAN_ROW = "mean"


def atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a half-written one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def target_payload(
    dataset: str, counts: dict[str, dict[str, int]], evaluation: Any, details: dict[str, Any]
) -> dict[str, Any]:
    """JSON-ready results of one evaluated dataset; ``evaluation`` is an ``EvaluationResult``."""
    categories = {
        category: {
            "n_normal": counts.get(category, {}).get("normal", 0),
            "n_anomalous": counts.get(category, {}).get("anomalous", 0),
            **{m: _clean(metrics.get(m)) for m in METRICS},
        }
        for category, metrics in evaluation.per_category.items()
    }
    return {
        "dataset": dataset,
        **details,
        "categories": categories,
        "mean": {m: _clean(evaluation.mean.get(m)) for m in METRICS},
        "missing": evaluation.missing,
    }


def csv_text(results: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for key, target in results["targets"].items():
        rows = [{"category": c, **v} for c, v in target["categories"].items()]
        n_normal = sum(v.get("n_normal", 0) for v in target["categories"].values())
        n_anomalous = sum(v.get("n_anomalous", 0) for v in target["categories"].values())
        rows.append(
            {"category": MEAN_ROW, "n_normal": n_normal, "n_anomalous": n_anomalous, **target["mean"]}
        )
        for row in rows:
            writer.writerow({"dataset": key, **{c: row.get(c) for c in CSV_COLUMNS if c != "dataset"}})
    return buffer.getvalue()


def write_results(run_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    json_path, csv_path = run_dir / "results.json", run_dir / "results.csv"
    atomic_write_text(json_path, json.dumps(results, indent=2, sort_keys=False) + "\n")
    atomic_write_text(csv_path, csv_text(results))
    return json_path, csv_path


def format_table(results: dict[str, Any]) -> str:
    """Per-category table in percent with one decimal, as papers report; '-' where undefined."""
    header = ("dataset", "category", "img AUROC", "img AP", "img F1", "px AUROC", "px AP", "AUPRO")
    lines = []
    for key, target in results["targets"].items():
        rows = list(target["categories"].items()) + [(MEAN_ROW, target["mean"])]
        for category, metrics in rows:
            cells = [f"{100 * v:.1f}" if v is not None else "-" for v in (metrics.get(m) for m in METRICS)]
            lines.append((key, category, *cells))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]

    def fmt(row: tuple) -> str:
        return "  ".join(
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])
