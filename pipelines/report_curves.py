"""Comparison figures for report.html: per target and category, the ROC (image, pixel) and PRO curves of
every setting in one figure, drawn from the curve points each evaluation wrote (``RUN/plots/{target}/
{category}/roc.csv`` and ``pro.csv``). Each setting shows its first replicate (lowest seed)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.report_grouping import Entry, Grouping

PANELS = (("image ROC", "FPR", "TPR"), ("pixel ROC", "FPR", "TPR"), ("PRO", "FPR", "PRO"))


def _read_points(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _panels_of(folder: Path) -> list[tuple[list[float], list[float]] | None]:
    """(x, y) of each panel in :data:`PANELS`, None where the run has no such curve."""
    roc = _read_points(folder / "roc.csv") if (folder / "roc.csv").is_file() else []
    pro = _read_points(folder / "pro.csv") if (folder / "pro.csv").is_file() else []
    out: list[tuple[list[float], list[float]] | None] = []
    for level in ("image", "pixel"):
        rows = [r for r in roc if r["level"] == level]
        out.append(([float(r["fpr"]) for r in rows], [float(r["tpr"]) for r in rows]) if rows else None)
    out.append(([float(r["fpr"]) for r in pro], [float(r["pro"]) for r in pro]) if pro else None)
    return out


def first_replicates(grouping: Grouping, row: str) -> dict[str, Entry]:
    """Column -> the entry of the cell's first replicate, for the columns that have this row."""
    return {
        column: cell.entries[0]
        for (cell_row, column), cell in sorted(grouping.cells.items())
        if cell_row == row and cell.entries
    }


def comparison_png(curves: dict[str, Path], title: str, fpr_limit: float) -> bytes | None:
    """One PNG: a panel per curve kind, a line per setting (``curves``: label -> its category folder)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = {label: _panels_of(folder) for label, folder in curves.items()}
    if not any(p for points in panels.values() for p in points):
        return None
    figure = Figure(figsize=(11, 3.4), dpi=80)
    axes = figure.subplots(1, len(PANELS))
    for index, (name, xlabel, ylabel) in enumerate(PANELS):
        ax = axes[index]
        for label, points in panels.items():
            if points[index] is not None:
                ax.plot(*points[index], label=label, linewidth=1.2)
        if name == "PRO":
            ax.set_xlim(0, fpr_limit)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[-1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(bottom=0.3, top=0.82, wspace=0.3)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def comparison_figures(grouping: Grouping) -> list[tuple[str, bytes]]:
    """(caption, PNG) per target row and category that any setting has curve points for."""
    out = []
    for row in grouping.rows:
        chosen = first_replicates(grouping, row)
        if not chosen:
            continue
        categories: dict[str, dict[str, Path]] = {}
        for column, entry in chosen.items():
            target_dir = entry.run.run_dir / "plots" / entry.target_key
            if target_dir.is_dir():
                for folder in sorted(p for p in target_dir.iterdir() if p.is_dir()):
                    categories.setdefault(folder.name, {})[f"{column} (seed {entry.run.seed_label})"] = folder
        fpr_limit = float((next(iter(chosen.values())).run.results.get("eval") or {}).get("fpr_limit", 0.3))
        for category, curves in categories.items():
            png = comparison_png(curves, f"{row} / {category}", fpr_limit)
            if png is not None:
                out.append((f"{row} / {category}", png))
    return out
