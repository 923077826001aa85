"""The report's tables as data, before any format: rows (datasets, or one dataset's categories) x settings,
one :class:`Stat` per metric in each cell (the replicates' values, their mean ± std, n, and a bootstrap
interval when one was computed). report.py writes them as markdown and CSV, report_html.py as HTML and
report_latex.py as LaTeX, so every format shows the same numbers."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from datamodules.errors import ZsadError
from lightning_modules.method_spec import PublishedNumbers
from lightning_modules.metrics.evaluation_result import as_percent as percent  # one rule for every table
from lightning_modules.registry import get_method
from pipelines.report_grouping import TRAINED_PREFIX

if TYPE_CHECKING:
    from pipelines.report_grouping import Entry, Grouping, RunRecord

#: ``--layout``: the metrics of the two tables as the papers print them. ``anomalyclip``: AnomalyCLIP's and
#: most zero-shot papers' pairs; ``adaptclip``: AdaptCLIP's, whose papers report pixel AUPR (anomalib's
#: trapezoid, zsad's ``pixel_aupr``) as the segmentation metric, first, beside pixel AUROC (their README
#: tables); ``full``: every metric.
LAYOUTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "anomalyclip": (
        ("image level (AUROC, AP)", ("image_auroc", "image_ap")),
        ("pixel level (AUROC, AUPRO)", ("pixel_auroc", "aupro")),
    ),
    "adaptclip": (
        ("image level (AUROC)", ("image_auroc",)),
        ("pixel level (AUPR, AUROC)", ("pixel_aupr", "pixel_auroc")),
    ),
    "full": (
        ("image level (AUROC, AP, F1-max)", ("image_auroc", "image_ap", "image_f1_max")),
        ("pixel level (AUROC, AP, AUPR, AUPRO)", ("pixel_auroc", "pixel_ap", "pixel_aupr", "aupro")),
    ),
}
DEFAULT_LAYOUT = "anomalyclip"
CFLOW_AUPRO = "aupro_cflow"
MEAN_ROW = "mean"  # a per-category table's last row: the dataset's category mean, as in results.csv
#: (row, column, category or None for the category mean, metric) -> (low, high): bootstrap intervals.
Intervals = dict[tuple[str, str, str | None, str], tuple[float, float]]


@dataclasses.dataclass(frozen=True)
class Stat:
    """One metric of one cell: a value per replicate (seed, draw, checkpoint) and, with ``--bootstrap``,
    the percentile interval of their mean over resampled test images."""

    values: tuple[float, ...]
    interval: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the replicates (None below two)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclasses.dataclass
class Row:
    label: str
    dataset: str  # the dataset whose published numbers apply (a dataset row), else ""
    cells: list[list[Stat] | None]  # per column one Stat per metric; None where the column has no runs
    n: list[int]  # replicates behind the column's numbers (the most of any metric; 0 where it has none)
    published: list[list[float | None]] | None = None  # per column per metric (fractions), with --reference


@dataclasses.dataclass
class Table:
    title: str
    row_header: str  # "dataset" or "category"
    metrics: tuple[str, ...]
    rows: list[Row]
    note: str | None = None
    baseline: int | None = None  # --baseline: the column the others' differences are taken against


def stat_text(stat: Stat) -> str:
    """``mean±std`` in percent (std with n >= 2), the interval as ``[low, high]`` where computed."""
    if stat.mean is None:
        return "-"
    text = percent(stat.mean) if stat.std is None else f"{percent(stat.mean)}±{percent(stat.std)}"
    if stat.interval is not None:
        text += f" [{percent(stat.interval[0])}, {percent(stat.interval[1])}]"
    return text


def table_specs(
    reference: bool, grouping: Grouping, layout: str = DEFAULT_LAYOUT
) -> list[tuple[str, tuple[str, ...], str | None]]:
    """(title, metrics, note) of each table of ``layout``. With --reference a table's AUPRO is the papers'
    cflow-style one where the runs recorded it, else a note says the two are not comparable."""
    if layout not in LAYOUTS:
        raise ZsadError(f"unknown report layout '{layout}'; known: {', '.join(LAYOUTS)}")
    tables = LAYOUTS[layout]
    if not reference:
        return [(title, metrics, None) for title, metrics in tables]
    if any(c.values(CFLOW_AUPRO) for c in grouping.cells.values()):
        note = (
            "AUPRO here is the 200-threshold cflow-style AUPRO of the public ZSAD code (`aupro_cflow`), the "
            "one the papers report, so it is comparable with the published rows; the exact AUPRO is in report.csv."
        )
        return [
            (
                (
                    title.replace("AUPRO", "AUPRO cflow-style"),
                    tuple(CFLOW_AUPRO if m == "aupro" else m for m in metrics),
                    note,
                )
                if "aupro" in metrics
                else (title, metrics, None)
            )
            for title, metrics in tables
        ]
    note = (
        "AUPRO here is zsad's exact AUPRO; the published AUPRO (marked *) is the papers' 200-threshold "
        "cflow-style AUPRO, which these runs did not record (no `aupro_cflow`): the two are NOT comparable. "
        "Runs of this zsad version record `aupro_cflow` beside `aupro`: evaluate again to compare."
    )
    return [(title, metrics, note if "aupro" in metrics else None) for title, metrics in tables]


def row_dataset(row: str, grouping: Grouping) -> str:
    for cell in grouping.cells.values():
        if cell.row == row and cell.entries:
            return str(cell.entries[0].payload.get("dataset", row))
    return row


def method_published(method: str) -> PublishedNumbers | None:
    """The published numbers of ``method`` at its paper's setting (its spec's ``published``); None for a method
    without any, or one this version does not know (runs of another version or of a plugin)."""
    try:
        return get_method(method).published
    except ZsadError:
        return None


def column_published(grouping: Grouping, column: str) -> PublishedNumbers | None:
    """The published numbers measured in a column's setting (MethodSpec.published_for: MuSc's backbone
    study gives each backbone its own); None where no source states any, or where the column's runs differ in
    a way that gives them different ones (other methods or shots included)."""
    if column in grouping.mixed_columns:
        return None
    try:
        spec = get_method(grouping.column_method[column])
    except ZsadError:
        return None
    found = [spec.published_numbers(s) for s in grouping.column_method_settings.get(column) or [{}]]
    return found[0] if all(f == found[0] for f in found) else None


def published_cell(
    numbers: PublishedNumbers | None, dataset: str, metric: str, shots: int = 0
) -> float | None:
    """One published number (the papers' AUPRO is the cflow-style one): the zero-shot rows, or a k-shot
    column's (``shots``) k-shot rows."""
    values = numbers.numbers(shots).get(dataset, {}) if numbers is not None else {}
    return values.get("aupro" if metric == CFLOW_AUPRO else metric)


def published_value(dataset: str, method: str, metric: str, shots: int = 0) -> float | None:
    """The published number of a dataset-level cell of ``method`` at its paper's setting."""
    return published_cell(method_published(method), dataset, metric, shots)


def published_columns(grouping: Grouping) -> dict[str, PublishedNumbers | None]:
    """:func:`column_published` of every column, resolved once for a whole table."""
    return {column: column_published(grouping, column) for column in grouping.columns}


def column_value(
    grouping: Grouping,
    published: dict[str, PublishedNumbers | None],
    column: str,
    row: str,
    dataset: str,
    metric: str,
) -> float | None:
    """The published number beside the dataset-level cell (``row``, ``column``) of ``dataset`` (its setting's,
    its shots'), from :func:`published_columns`; none where a run of the cell was trained otherwise than the
    paper's numbers of that dataset (``PublishedNumbers.measured_after``: e.g. on MVTec AD itself, where the
    paper's MVTec AD numbers were trained on VisA)."""
    numbers = published[column]
    cell = grouping.cells.get((row, column))
    if numbers is not None and cell is not None:
        trained = {(e.run.results.get("source"), _trained_epochs(e)) for e in cell.entries}
        if not all(numbers.measured_after(dataset, source, epochs) for source, epochs in trained):
            return None
    return published_cell(numbers, dataset, metric, grouping.column_shots.get(column, 0))


def _trained_epochs(entry: Entry) -> int | None:
    """The epochs the entry's weights were trained for: a `zsad test` run's checkpoint's (``trained.*``), a
    `zsad run`'s own; None where unknown (the authors' weights, a run without config.yaml)."""
    epochs = entry.setting.get(f"{TRAINED_PREFIX}trainer.max_epochs")
    if epochs is None and not entry.run.results.get("checkpoint"):
        epochs = entry.setting.get("trainer.max_epochs")
    return epochs


def published_sources(grouping: Grouping) -> str:
    """Where the published rows come from: the sources of the shown settings' numbers (their k-shot sources
    for k-shot columns), each once."""
    sources = []
    for column, numbers in published_columns(grouping).items():
        if numbers is not None:
            sources.append(numbers.source_of(grouping.column_shots.get(column, 0)))
    return "; ".join(dict.fromkeys(sources)) or "none of these settings"


def baseline_column(grouping: Grouping, runs: list[RunRecord], which: str) -> str:
    """The setting (column) of ``which`` for --baseline: a run folder, or an experiment name whose runs share
    one setting (e.g. ``cmg_baseline`` of the CMG ablation)."""
    path = Path(which).resolve()
    chosen = [r.setting for r in runs if r.run_dir.resolve() == path or r.results.get("experiment") == which]
    columns = {
        cell.column for cell in grouping.cells.values() for e in cell.entries if e.run.setting in chosen
    }
    if len(columns) != 1:
        found = f"settings {sorted(columns)}" if columns else "no run"
        raise ZsadError(
            f"--baseline {which}: {found} of the report match; give one run folder or an experiment name "
            "whose runs share one setting"
        )
    return columns.pop()


def _row(
    grouping: Grouping,
    row: str,
    label: str,
    category: str | None,
    metrics: tuple[str, ...],
    intervals: Intervals,
) -> Row:
    cells: list[list[Stat] | None] = []
    counts = []
    for column in grouping.columns:
        cell = grouping.cells.get((row, column))
        if cell is None or (category is not None and category not in cell.categories()):
            cells.append(None)
            counts.append(0)
            continue
        stats = [
            Stat(tuple(cell.values(m, category)), intervals.get((row, column, category, m))) for m in metrics
        ]
        cells.append(stats)
        # the replicates behind the numbers (a seed without this category or metric adds none)
        counts.append(max(s.n for s in stats))
    return Row(label, row_dataset(row, grouping) if category is None else "", cells, counts)


def dataset_tables(
    grouping: Grouping,
    reference: bool,
    intervals: Intervals | None = None,
    baseline: str | None = None,
    layout: str = DEFAULT_LAYOUT,
) -> list[Table]:
    """The datasets x settings tables (category means) of ``layout``, with the published numbers under
    --reference and the differences to the ``baseline`` column with --baseline."""
    tables = []
    for title, metrics, note in table_specs(reference, grouping, layout):
        rows = [_row(grouping, r, r, None, metrics, intervals or {}) for r in grouping.rows]
        if reference:
            published = published_columns(grouping)
            for row in rows:
                row.published = [
                    [column_value(grouping, published, c, row.label, row.dataset, m) for m in metrics]
                    for c in grouping.columns
                ]
        tables.append(Table(title, "dataset", metrics, rows, note, _index(grouping, baseline)))
    return tables


def _index(grouping: Grouping, column: str | None) -> int | None:
    return grouping.columns.index(column) if column is not None else None


def category_tables(
    grouping: Grouping,
    reference: bool,
    intervals: Intervals | None = None,
    baseline: str | None = None,
    layout: str = DEFAULT_LAYOUT,
) -> list[tuple[str, list[Table]]]:
    """Per dataset row with more than one category: (row, its categories x settings tables, the category
    mean as the last row), the metric pairs of :func:`dataset_tables`."""
    out = []
    for row in grouping.rows:
        categories = list(
            dict.fromkeys(c for cell in grouping.cells.values() if cell.row == row for c in cell.categories())
        )
        if len(categories) < 2:
            continue
        tables = []
        for title, metrics, _ in table_specs(reference, grouping, layout):
            rows = [_row(grouping, row, c, c, metrics, intervals or {}) for c in categories]
            rows.append(_row(grouping, row, MEAN_ROW, None, metrics, intervals or {}))
            rows[-1].dataset = ""  # the published numbers belong to the dataset tables
            tables.append(
                Table(f"{row}: {title}", "category", metrics, rows, baseline=_index(grouping, baseline))
            )
        out.append((row, tables))
    return out


def _difference(stat: Stat, base: Stat | None) -> str:
    """`` (+1.2)``: the mean minus the baseline's, in percent points; empty without both (or for the
    baseline itself)."""
    if base is None or stat is base or stat.mean is None or base.mean is None:
        return ""
    return f" ({percent(stat.mean - base.mean, signed=True)})"


def _counts(stats: list[Stat], n: int) -> str:
    """A cell's ``n``: one number, or each metric's where the replicates behind them differ."""
    return str(n) if len({s.n for s in stats if s.n}) <= 1 else ", ".join(str(s.n) for s in stats)


def text_rows(table: Table) -> list[tuple[str, list[str]]]:
    """(row label, one text per column) of a table for markdown and HTML: ``numbers (n=N)``, each number
    followed by its difference to the baseline column's with --baseline; published rows
    (``ROW (published)``) under their dataset's row."""
    out = []
    for row in table.rows:
        base = row.cells[table.baseline] if table.baseline is not None else None
        texts = [
            ""
            if stats is None
            else ", ".join(
                stat_text(s) + _difference(s, base[i] if base is not None else None)
                for i, s in enumerate(stats)
            )
            + f" (n={_counts(stats, n)})"
            for stats, n in zip(row.cells, row.n, strict=True)
        ]
        out.append((row.label, texts))
        if row.published is not None:
            # the papers' AUPRO is the cflow-style one: marked where the column holds the exact AUPRO
            ref = [
                ", ".join(
                    percent(v) + ("*" if m == "aupro" and v is not None else "")
                    for m, v in zip(table.metrics, values, strict=True)
                )
                for values in row.published
            ]
            out.append((f"{row.label} (published)", ref))
    return out
