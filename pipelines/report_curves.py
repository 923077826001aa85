"""Comparison figures for report.html: per target and category, the ROC (image, pixel) and PRO curves of
every setting in one figure, drawn from the curve points each evaluation wrote (``RUN/plots/{target}/
{category}/roc.csv`` and ``pro.csv``). Every replicate (seed, draw) of a setting is a thin line, their mean
(vertical average: TPR or PRO averaged at each FPR) a bold one in the same colour; each panel's legend gives
the setting's metric of that curve (mean ± std over its replicates, from results.json) and its seeds."""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.report_grouping import metric_value
from pipelines.report_tables import percent

if TYPE_CHECKING:
    from pipelines.report_grouping import Cell, Entry, Grouping

#: (title, x label, y label, the metric the curve integrates)
PANELS = (
    ("image ROC", "FPR", "TPR", "image_auroc"),
    ("pixel ROC", "FPR", "TPR", "pixel_auroc"),
    ("PRO", "FPR (anomaly-free pixels)", "PRO", "aupro"),
)
GRID = 201  # points of the averaged curves
Curve = tuple[np.ndarray, np.ndarray]


def _read_points(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _panels_of(folder: Path) -> list[Curve | None]:
    """(x, y) of each panel in :data:`PANELS`, None where the run has no such curve."""
    roc = _read_points(folder / "roc.csv") if (folder / "roc.csv").is_file() else []
    pro = _read_points(folder / "pro.csv") if (folder / "pro.csv").is_file() else []
    out: list[Curve | None] = []
    for level in ("image", "pixel"):
        rows = [r for r in roc if r["level"] == level]
        out.append((_floats(rows, "fpr"), _floats(rows, "tpr")) if rows else None)
    out.append((_floats(pro, "fpr"), _floats(pro, "pro")) if pro else None)
    return out


def _floats(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def vertical_mean(curves: list[Curve], x_max: float) -> Curve:
    """The curves' mean y at each of :data:`GRID` x in [0, x_max]; at an x with a vertical segment a curve
    counts its highest point there (a ROC or PRO curve reaches it at that FPR)."""
    grid = np.linspace(0.0, x_max, GRID)
    ys = []
    for x, y in curves:
        xs, first = np.unique(x, return_index=True)
        top = np.maximum.reduceat(y, first)  # x is non-decreasing: each run of equal x is one slice
        ys.append(np.interp(grid, xs, top))
    return grid, np.mean(ys, axis=0)


@dataclasses.dataclass
class SettingCurves:
    """One setting's curves of one category: each replicate's panels and the legend of each panel."""

    label: str
    replicates: list[list[Curve | None]]
    legends: list[str]


def _legend(column: str, cell: Cell, category: str, metric: str) -> str:
    values = cell.values(metric, category)
    # the seeds behind the number (a replicate without this category or metric adds none); all without one
    behind = [e for e in cell.entries if metric_value(e, metric, category) is not None] or cell.entries
    seeds = ", ".join(e.run.seed_label for e in behind)
    if not values:
        return f"{column} (seeds {seeds})"
    shown = percent(statistics.fmean(values))
    if len(values) > 1:
        shown += f"±{percent(statistics.stdev(values))}"
    name = {"image_auroc": "AUROC", "pixel_auroc": "AUROC", "aupro": "AUPRO"}[metric]
    return f"{column}: {name} {shown} (seeds {seeds})"


def comparison_png(settings: list[SettingCurves], title: str, fpr_limit: float) -> bytes | None:
    """One PNG: a panel per curve kind; per setting its replicates thin and their mean bold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any(p is not None for s in settings for panels in s.replicates for p in panels):
        return None
    figure = Figure(figsize=(13, 4.6), dpi=80)
    axes = figure.subplots(1, len(PANELS))
    colours = [f"C{i % 10}" for i in range(len(settings))]
    for index, (name, xlabel, ylabel, _) in enumerate(PANELS):
        ax = axes[index]
        x_max = fpr_limit if name == "PRO" else 1.0
        for setting, colour in zip(settings, colours, strict=True):
            curves = [panels[index] for panels in setting.replicates if panels[index] is not None]
            if not curves:
                continue
            for x, y in curves:
                ax.plot(x, y, color=colour, linewidth=0.7, alpha=0.4)
            ax.plot(*vertical_mean(curves, x_max), color=colour, linewidth=2.2, label=setting.legends[index])
        if name != "PRO":
            ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=0.8)
        ax.set_xlim(0, x_max)
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=6.5, framealpha=0.85)
    figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.12, top=0.86, wspace=0.22)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def plot_folders(entry: Entry) -> dict[str, Path]:
    """Category -> the folder of curve points and pictures that an evaluation wrote for this entry."""
    target_dir = entry.run.output_dir / "plots" / entry.target_key
    if not target_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(target_dir.iterdir()) if p.is_dir()}


def comparison_figures(grouping: Grouping) -> list[tuple[str, bytes]]:
    """(caption, PNG) per target row and category that any setting has curve points for."""
    out = []
    for row in grouping.rows:
        cells = [
            (column, grouping.cells[(row, column)])
            for column in grouping.columns
            if (row, column) in grouping.cells
        ]
        folders = {column: [plot_folders(e) for e in cell.entries] for column, cell in cells}
        categories = list(dict.fromkeys(c for per_entry in folders.values() for f in per_entry for c in f))
        if not categories:
            continue
        first = cells[0][1].entries[0]
        fpr_limit = float((first.run.results.get("eval") or {}).get("fpr_limit", 0.3))
        for category in categories:
            settings = [
                SettingCurves(
                    column,
                    [_panels_of(f[category]) for f in folders[column] if category in f],
                    [_legend(column, cell, category, metric) for *_, metric in PANELS],
                )
                for column, cell in cells
            ]
            title = (
                f"{row} / {category}: {len(settings)} setting(s), every replicate thin, their mean bold "
                "(legend: the setting's metric, mean±std over its replicates)"
            )
            png = comparison_png(settings, title, fpr_limit)
            if png is not None:
                out.append((f"{row} / {category}", png))
    return out
