"""Paper-style tables from finished runs: datasets x settings and, per dataset, categories x settings, image
(AUROC, AP) and pixel (AUROC, AUPRO).

A table is only as honest as its grouping. Runs are grouped by their *full resolved config*
(``config.yaml``) minus the seed and minus the keys that cannot change a result (:data:`IGNORED_KEYS`):
each distinct setting is a column, named by its method and the keys that differ from the other columns
of that method; each target is a row. A cell is the mean ± sample standard deviation over seeds, with n.
Identical reruns (same setting and same seed) count once, the newest result; a cell that still mixes
anything but seeds (``--group-by`` chose coarser groups, runs without ``config.yaml``, different data
behind the same name) gets a warning. Written as ``report.md``, ``report.csv``, a self-contained
``report.html`` (tables and every run's curves) and, with ``--latex``, ``report.tex``; see docs/reports.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.atomic_io import atomic_write_text
from datamodules.errors import ConfigError, ZsadError
from pipelines.report_grouping import (
    CFLOW_AUPRO,
    Grouping,
    RunRecord,
    entries_of,
    group,
    load_runs,
    metric_value,
)
from pipelines.report_tables import (
    DEFAULT_LAYOUT,
    MEAN_ROW,
    Intervals,
    Table,
    baseline_column,
    category_tables,
    column_value,
    dataset_tables,
    percent,
    published_columns,
    published_sources,
    row_dataset,
    table_specs,
    text_rows,
)
from pipelines.run_state import read_status

if TYPE_CHECKING:
    from pipelines.report_bootstrap import Comparison

#: What a cell shows (markdown and HTML say it above the tables).
CELLS = "mean±std over the replicates (seeds, draws), in percent, n = number of replicates with that number"


@dataclasses.dataclass
class Report:
    markdown: str
    csv_text: str
    markdown_path: Path
    csv_path: Path
    html_path: Path
    latex_path: Path | None
    n_runs: int
    warnings: list[str]
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)


# --- loading ------------------------------------------------------------------------------------------
def _collect_run_dirs(inputs: list[str]) -> tuple[list[Path], Path | None, str | None]:
    run_dirs: list[Path] = []
    default_out, group = None, None
    for item in inputs:
        path = Path(item)
        if path.suffix in (".yaml", ".yml") or (not path.exists() and "/" not in item):
            from pipelines import sweep

            cfg, _ = sweep.load_sweep(item)
            run_dirs += [Path(r.run_dir) for r in sweep.expand(cfg)]
            default_out, group = sweep.sweep_dir(cfg), cfg.name
        elif (path / "results.json").is_file():
            run_dirs.append(path)
        elif path.is_dir():
            run_dirs += sorted(p.parent for p in path.rglob("results.json"))
        else:
            raise ZsadError(f"report input not found: {item} (give sweep files or run folders)")
    return list(dict.fromkeys(run_dirs)), default_out, group


# --- rendering ----------------------------------------------------------------------------------------
def _markdown_table(table: Table, columns: list[str], level: str = "##") -> list[str]:
    lines = [f"{level} {table.title}", "", f"| {table.row_header} | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    lines += [f"| {label} | " + " | ".join(texts) + " |" for label, texts in text_rows(table)]
    lines.append("")
    if table.note:
        lines += [table.note, ""]
    return lines


def _markdown(
    grouping: Grouping,
    n_runs: int,
    tables: list[Table],
    per_category: list[tuple[str, list[Table]]],
    reference: bool,
    group_by: list[str] | None,
    extra: list[str],
    baseline: str | None = None,
) -> str:
    how = (
        f"grouped by {', '.join(group_by)}"
        if group_by
        else "grouped by each run's full config minus the seed and the keys that do not change results"
    )
    lines = [
        f"# Results ({n_runs} runs, {len(grouping.columns)} settings)",
        "",
        f"Cells: {CELLS}; {how} (docs/reports.md).",
        *([f"(±x.x): the difference of the mean to the baseline setting `{baseline}`."] if baseline else []),
        "",
        "| setting | seeds | keys |",
        "|---|---|---|",
    ]
    for column in grouping.columns:
        seeds = ", ".join(map(str, grouping.column_seeds[column]))
        lines.append(f"| {column} | {seeds} | {grouping.column_keys[column]} |")
    lines.append("")
    for table in tables:
        lines += _markdown_table(table, grouping.columns)
    if reference:
        lines += [f"Published rows: {published_sources(grouping)}.", ""]
    for row, row_tables in per_category:
        lines += [f"## Per category: {row}", ""]
        for table in row_tables:
            lines += _markdown_table(table, grouping.columns, "###")
    lines += extra
    if grouping.warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in grouping.warnings), ""]
    if grouping.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in grouping.notes), ""]
    return "\n".join(lines)


CSV_FIELDS = (
    "dataset",
    "category",
    "setting",
    "method",
    "metric",
    "mean",
    "std",
    "n",
    "ci_low",
    "ci_high",
    "seeds",
    "published",
    "runs",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _csv_rows(grouping: Grouping, intervals: Intervals) -> list[dict[str, Any]]:
    """One row per (dataset, category, setting, metric): the category mean (category ``mean``) first, then
    each category."""
    rows = []
    published = published_columns(grouping)
    for (row, column), cell in sorted(grouping.cells.items()):
        metrics = sorted(
            {m for e in cell.entries for m, v in e.payload.get("mean", {}).items() if _is_number(v)}
        )
        if any(metric_value(e, CFLOW_AUPRO) is not None for e in cell.entries) and CFLOW_AUPRO not in metrics:
            metrics.append(CFLOW_AUPRO)
        dataset = row_dataset(row, grouping)
        for category in (None, *cell.categories()):
            for metric in metrics:
                numbers = cell.values(metric, category)
                if not numbers:
                    continue
                interval = intervals.get((row, column, category, metric))
                reference = None
                if category is None and metric != "aupro":
                    reference = column_value(grouping, published, column, row, dataset, metric)
                rows.append(
                    {
                        "dataset": row,
                        "category": MEAN_ROW if category is None else category,
                        "setting": column,
                        "method": grouping.column_method[column],
                        "metric": metric,
                        "mean": statistics.fmean(numbers),
                        "std": statistics.stdev(numbers) if len(numbers) > 1 else None,  # undefined for one
                        "n": len(numbers),
                        "ci_low": None if interval is None else interval[0],
                        "ci_high": None if interval is None else interval[1],
                        "seeds": " ".join(
                            e.run.seed_label
                            for e in cell.entries
                            if metric_value(e, metric, category) is not None
                        ),
                        "published": reference,
                        "runs": " ".join(str(e.run.run_dir) for e in cell.entries),
                    }
                )
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _note_unfinished(grouping: Grouping, run_dirs: list[Path], runs: list[RunRecord]) -> None:
    """Runs of the inputs without results are named; results of a run that did not finish may be partial."""
    waiting = [d for d in run_dirs if not (d / "results.json").is_file()]
    if waiting:
        shown = ", ".join(str(d) for d in waiting[:10]) + (" ..." if len(waiting) > 10 else "")
        grouping.notes.insert(0, f"{len(waiting)} run(s) have no results.json yet and are left out: {shown}")
    for run in runs:
        state = read_status(run.run_dir)["state"]
        if state not in ("finished", "pending"):  # pending: no status.json (a run of an older version)
            grouping.warnings.append(
                f"{run.run_dir} is {state}: its results.json holds only the targets evaluated so far"
            )


DEFAULT_RESAMPLES = 1000  # --compare without --bootstrap


def build_report(
    inputs: list[str],
    out: str | None = None,
    reference: bool = False,
    wandb_mode: str = "offline",
    project: str = "zsad",
    group_by: list[str] | None = None,
    latex: bool = False,
    bootstrap: int | None = None,
    seed: int = 0,
    compare: tuple[str, str] | None = None,
    baseline: str | None = None,
    layout: str = DEFAULT_LAYOUT,
    confidence: float | None = None,
) -> Report:
    """``baseline``: a run folder or an experiment name whose setting every other cell is compared with
    (e.g. the CMG ablation against ``cmg_baseline``); ``layout``: the tables' metrics
    (:data:`pipelines.report_tables.LAYOUTS`); ``confidence``: the level of the bootstrap intervals
    (default 0.95)."""
    from pipelines.report_html import render_html

    run_dirs, default_out, wandb_group = _collect_run_dirs(inputs)
    runs = [r for d in run_dirs for r in load_runs(d)]
    entries = entries_of(runs)
    if not entries:
        raise ZsadError("no finished runs (results.json with evaluated targets) found in the given inputs")
    grouping = group(entries, group_by)
    _note_unfinished(grouping, run_dirs, runs)
    base = baseline_column(grouping, runs, baseline) if baseline else None
    settings = None
    if compare is not None:
        from pipelines.report_bootstrap import resolve_setting

        settings = (
            resolve_setting(compare[0], grouping.columns),
            resolve_setting(compare[1], grouping.columns),
        )
    if confidence is not None and not (bootstrap or settings):
        raise ConfigError(
            "--confidence sets the level of the --bootstrap and --compare intervals: add --bootstrap N (or "
            "--compare A B), or leave it out"
        )
    intervals: Intervals = {}
    extra: list[str] = []
    extra_html: list[str] = []
    comparisons: list[Comparison] = []
    if bootstrap or settings:
        from pipelines.report_bootstrap import CONFIDENCE
        from pipelines.report_bootstrap import bootstrap as resample
        from pipelines.report_bootstrap import compare as paired
        from pipelines.report_html import comparison_html, paragraph

        found = resample(
            grouping, bootstrap or DEFAULT_RESAMPLES, seed, CONFIDENCE if confidence is None else confidence
        )
        intervals = found.intervals
        level = level_label(found.confidence)
        about = f"Intervals [low, high]: {INTERVALS.format(level=level, n=found.n_resamples, seed=seed)}"
        extra += [about, ""]
        extra_html.append(paragraph(about))
        grouping.notes += found.notes
        if settings is not None:
            metrics = tuple(
                dict.fromkeys(m for _, ms, _ in table_specs(reference, grouping, layout) for m in ms)
            )
            comparisons = paired(grouping, found, *settings, metrics)
            title, about, header, lines = _comparison_rows(comparisons, *settings, found.n_resamples, level)
            extra += [
                f"## {title}",
                "",
                about,
                "",
                "| " + " | ".join(header) + " |",
                "|---" * len(header) + "|",
            ]
            extra += ["| " + " | ".join(line) + " |" for line in lines] + [""]
            extra_html += comparison_html(title, about, header, lines)
    tables = dataset_tables(grouping, reference, intervals, base, layout)
    per_category = category_tables(grouping, reference, intervals, base, layout)
    markdown = _markdown(grouping, len(runs), tables, per_category, reference, group_by, extra, base)
    rows = _csv_rows(grouping, intervals)
    csv_text = _csv_text(rows)

    out_dir = Path(out) if out else (default_out or Path("report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "report.md", out_dir / "report.csv", out_dir / "report.html"
    atomic_write_text(paths[0], markdown + "\n")
    atomic_write_text(paths[1], csv_text)
    if settings is not None:
        atomic_write_text(out_dir / "compare.csv", _comparison_csv(comparisons, *settings))
    title = markdown.splitlines()[0][2:]
    page = render_html(grouping, tables, per_category, title, reference, CELLS, extra_html, out_dir.resolve())
    atomic_write_text(paths[2], page)
    latex_path = None
    if latex:
        from pipelines.report_latex import render_latex

        latex_path = out_dir / "report.tex"
        atomic_write_text(latex_path, render_latex(grouping, tables, per_category, reference))
    if wandb_mode != "disabled":
        _log_to_wandb(rows, out_dir, wandb_group, wandb_mode, project)
    return Report(markdown, csv_text, *paths, latex_path, len(runs), grouping.warnings, comparisons)


def level_label(confidence: float) -> str:
    """``95%``, ``90%``, ``99.9%``: an interval level as the tables print it."""
    return f"{100 * confidence:.10g}%"


INTERVALS = (
    "{level} percentile bootstrap intervals of each cell's mean over {n} resamples of the test images (each "
    "category's normal and anomalous images drawn with replacement, the same draws for every run on the same "
    "images; seed {seed}), every metric recomputed exactly from the runs' saved maps: the uncertainty from the "
    "choice of test images, with the replicates fixed; ± is the spread over replicates."
)


def _comparison_rows(
    comparisons: list[Comparison], a: str, b: str, n: int, level: str = "95%"
) -> tuple[str, str, list[str], list[list[str]]]:
    """(title, explanation, header, rows) of the paired comparison, for markdown and HTML."""
    about = (
        f"The difference on the same test images, its {level} percentile interval over {n} paired resamples and the "
        f"two-sided bootstrap p-value (twice the share of resampled differences on the far side of 0; at least "
        f"{2 / (n + 1):.2g})."
    )
    header = ["dataset", "metric", a, b, f"difference [{level} interval]", "p"]
    rows = [
        [
            c.dataset,
            c.metric,
            percent(c.a),
            percent(c.b),
            f"{percent(c.difference, signed=True)} [{percent(c.interval[0], signed=True)}, "
            f"{percent(c.interval[1], signed=True)}]",
            f"{c.p_value:.3g}",
        ]
        for c in comparisons
    ]
    if not rows:
        rows = [["(no dataset has results of both settings)", "", "", "", "", ""]]
    return f"Paired comparison: {a} − {b}", about, header, rows


def _comparison_csv(comparisons: list[Comparison], a: str, b: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "dataset",
            "metric",
            "setting_a",
            "setting_b",
            "a",
            "b",
            "difference",
            "ci_low",
            "ci_high",
            "p_value",
        ]
    )
    for c in comparisons:
        writer.writerow([c.dataset, c.metric, a, b, c.a, c.b, c.difference, *c.interval, c.p_value])
    return buffer.getvalue()


def _log_to_wandb(
    rows: list[dict[str, Any]], out_dir: Path, group: str | None, mode: str, project: str
) -> None:
    import wandb

    run = wandb.init(
        project=project, group=group, job_type="report", mode=mode, dir=str(out_dir), reinit="finish_previous"
    )
    columns = list(CSV_FIELDS)
    run.log({"report/table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
    run.finish()
