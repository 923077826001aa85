"""Results files of a run: ``results.json`` (everything) and ``results.csv`` (one row per category).

Files are rewritten atomically after every evaluated target, so a failure on a later target never loses
the results already computed. :func:`atomic_write` is how every file of a run folder is written.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import errno
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from lightning_modules.metrics.evaluator import METRIC_NAMES
from pipelines.errors import WriteFailedError

#: Every result has both AUPROs: ``aupro`` (exact) and ``aupro_cflow`` (the published 200-threshold one).
METRICS = METRIC_NAMES
CSV_COLUMNS = ("dataset", "category", "n_normal", "n_anomalous", *METRICS)
MEAN_ROW = "mean"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp gives 0600)


def _free_space(folder: Path) -> str:
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    raise AssertionError


def write_error(path: Path, error: OSError) -> WriteFailedError:
    """One line for a failed write: what, where, why and how much space the filesystem has left."""
    reason = error.strerror or str(error)
    code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
    return WriteFailedError(
        f"cannot write {path.name} in {path.parent}: {reason}{code}; {_free_space(path.parent)} there",
        path=path,
    )


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write(handle)`` so that readers see the old file or the whole new one.

    A unique temp file in the same folder is written, fsynced and renamed over ``path`` (then the folder
    is fsynced), so concurrent writers never collide and a crash never leaves a partial file under the
    real name. On any failure the temp file is removed; an OS error (a full disk, permissions) becomes
    :class:`WriteFailedError` naming the file and the free space.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise write_error(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise write_error(path, error) from error
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every filesystem lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


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
    what ``zsad predict --threshold-from RUN`` reads."""
    categories = {
        category: {
            "n_normal": counts.get(category, {}).get("normal", 0),
            "n_anomalous": counts.get(category, {}).get("anomalous", 0),
            **{m: _clean(metrics.get(m)) for m in METRICS},
            **({"f1_thresholds": thresholds.get(category)} if thresholds is not None else {}),
        }
        for category, metrics in evaluation.per_category.items()
    }
    return {
        "dataset": dataset,
        **details,
        "categories": categories,
        "mean": {m: _clean(evaluation.mean.get(m)) for m in METRICS},
        "missing": evaluation.missing,
        "fpr_limit": evaluation.fpr_limit,
        "pixel_score_dtype": evaluation.pixel_score_dtype,
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


def format_table(results: dict[str, Any]) -> str:
    """Per-category table in percent with one decimal, as papers report; '-' where undefined."""
    header = (
        "dataset",
        "category",
        "img AUROC",
        "img AP",
        "img F1",
        "px AUROC",
        "px AP",
        "AUPRO",
        "AUPRO cflow",
    )
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
