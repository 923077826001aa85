"""Paper-style tables from finished runs: datasets x settings, image (AUROC, AP) and pixel (AUROC, AUPRO).

A table is only as honest as its grouping. Runs are grouped by their *full resolved config*
(``config.yaml``) minus the seed and minus the keys that cannot change a result (:data:`IGNORED_KEYS`):
each distinct setting is a column, named by its method and the keys that differ from the other columns
of that method; each target is a row. A cell is the mean ± sample standard deviation over seeds, with n.
Identical reruns (same setting and same seed) count once, the newest result; a cell that still mixes
anything but seeds (``--group-by`` chose coarser groups, runs without ``config.yaml``, different data
behind the same name) gets a warning. Written as ``report.md``, ``report.csv`` and a self-contained
``report.html`` (tables and every run's curves); see docs/reports.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from pathlib import Path
from typing import Any

from datamodules.atomic_io import atomic_write_text
from datamodules.errors import ZsadError
from lightning_modules.metrics.evaluation_result import as_percent
from pipelines.published import SOURCE, published
from pipelines.report_grouping import (
    CFLOW_AUPRO,
    Grouping,
    RunRecord,
    entries_of,
    group,
    load_run,
    metric_value,
)
from pipelines.run_state import read_status

TABLES = (
    ("image level (AUROC, AP)", ("image_auroc", "image_ap")),
    ("pixel level (AUROC, AUPRO)", ("pixel_auroc", "aupro")),
)


@dataclasses.dataclass
class Report:
    markdown: str
    csv_text: str
    markdown_path: Path
    csv_path: Path
    html_path: Path
    n_runs: int
    warnings: list[str]


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
def _cell_text(values: list[float]) -> str:
    if not values:
        return "-"
    mean = as_percent(statistics.fmean(values))
    return mean if len(values) == 1 else f"{mean}±{as_percent(statistics.stdev(values))}"


def _tables(reference: bool, grouping: Grouping) -> list[tuple[str, tuple[str, ...], str | None]]:
    """(title, metrics, note). With --reference the pixel table shows the papers' cflow AUPRO."""
    if not reference:
        return [(title, metrics, None) for title, metrics in TABLES]
    has_cflow = any(c.values(CFLOW_AUPRO) for c in grouping.cells.values())
    if has_cflow:
        note = (
            "AUPRO here is the 200-threshold cflow-style AUPRO of the public ZSAD code (`aupro_cflow`), the "
            "one the papers report, so it is comparable with the published rows; the exact AUPRO is in report.csv."
        )
        return [
            (*TABLES[0], None),
            ("pixel level (AUROC, AUPRO cflow-style)", ("pixel_auroc", CFLOW_AUPRO), note),
        ]
    note = (
        "AUPRO here is zsad's exact AUPRO; the published AUPRO (marked *) is the papers' 200-threshold "
        "cflow-style AUPRO, which these runs did not record (no `aupro_cflow`): the two are NOT comparable. "
        "Runs of this zsad version record `aupro_cflow` beside `aupro`: evaluate again to compare."
    )
    return [(TABLES[0][0], TABLES[0][1], None), (TABLES[1][0], TABLES[1][1], note)]


def _published_for(row: str, column: str, grouping: Grouping, metric: str) -> float | None:
    dataset = _row_dataset(row, grouping)
    method = grouping.column_method[column]
    return published(dataset, method).get("aupro" if metric == CFLOW_AUPRO else metric)


def _row_dataset(row: str, grouping: Grouping) -> str:
    for cell in grouping.cells.values():
        if cell.row == row and cell.entries:
            return str(cell.entries[0].payload.get("dataset", row))
    return row


def table_rows(grouping: Grouping, metrics: tuple[str, ...], reference: bool) -> list[tuple[str, list[str]]]:
    """(row label, one text per column) for one table, published rows interleaved."""
    out = []
    for row in grouping.rows:
        texts = []
        for column in grouping.columns:
            cell = grouping.cells.get((row, column))
            if cell is None:
                texts.append("")
                continue
            numbers = ", ".join(_cell_text(cell.values(m)) for m in metrics)
            texts.append(f"{numbers} (n={len(cell.entries)})")
        out.append((row, texts))
        if reference:
            ref = []
            for column in grouping.columns:
                values = [_published_for(row, column, grouping, m) for m in metrics]
                # the papers' AUPRO is the cflow-style one: marked where the column holds the exact AUPRO
                ref.append(
                    ", ".join(
                        "-" if v is None else as_percent(v) + ("*" if m == "aupro" else "")
                        for m, v in zip(metrics, values, strict=True)
                    )
                )
            out.append((f"{row} (published)", ref))
    return out


def _markdown(grouping: Grouping, n_runs: int, reference: bool, group_by: list[str] | None) -> str:
    how = (
        f"grouped by {', '.join(group_by)}"
        if group_by
        else "grouped by each run's full config minus the seed and the keys that do not change results"
    )
    lines = [
        f"# Results ({n_runs} runs, {len(grouping.columns)} settings)",
        "",
        f"Cells: mean±std over seeds, in percent, n = number of seeds; {how} (docs/reports.md).",
        "",
        "| setting | seeds | keys |",
        "|---|---|---|",
    ]
    for column in grouping.columns:
        seeds = ", ".join(map(str, grouping.column_seeds[column]))
        lines.append(f"| {column} | {seeds} | {grouping.column_keys[column]} |")
    lines.append("")
    for title, metrics, note in _tables(reference, grouping):
        lines += [f"## {title}", "", "| dataset | " + " | ".join(grouping.columns) + " |"]
        lines.append("|---" * (len(grouping.columns) + 1) + "|")
        lines += [
            f"| {row} | " + " | ".join(texts) + " |"
            for row, texts in table_rows(grouping, metrics, reference)
        ]
        lines.append("")
        if note:
            lines += [note, ""]
    if reference:
        lines += [f"Published rows: {SOURCE}.", ""]
    if grouping.warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in grouping.warnings), ""]
    if grouping.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in grouping.notes), ""]
    return "\n".join(lines)


CSV_FIELDS = ("dataset", "setting", "method", "metric", "mean", "std", "n", "seeds", "published", "runs")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _csv_rows(grouping: Grouping) -> list[dict[str, Any]]:
    rows = []
    for (row, column), cell in sorted(grouping.cells.items()):
        metrics = sorted(
            {m for e in cell.entries for m, v in e.payload.get("mean", {}).items() if _is_number(v)}
        )
        if any(metric_value(e, CFLOW_AUPRO) is not None for e in cell.entries) and CFLOW_AUPRO not in metrics:
            metrics.append(CFLOW_AUPRO)
        for metric in metrics:
            numbers = cell.values(metric)
            if not numbers:
                continue
            rows.append(
                {
                    "dataset": row,
                    "setting": column,
                    "method": grouping.column_method[column],
                    "metric": metric,
                    "mean": statistics.fmean(numbers),
                    "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
                    "n": len(numbers),
                    "seeds": " ".join(
                        e.run.seed_label for e in cell.entries if metric_value(e, metric) is not None
                    ),
                    "published": None if metric == "aupro" else _published_for(row, column, grouping, metric),
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


def build_report(
    inputs: list[str],
    out: str | None = None,
    reference: bool = False,
    wandb_mode: str = "offline",
    project: str = "zsad",
    group_by: list[str] | None = None,
) -> Report:
    from pipelines.report_html import render_html

    run_dirs, default_out, wandb_group = _collect_run_dirs(inputs)
    runs = [r for r in (load_run(d) for d in run_dirs) if r is not None]
    entries = entries_of(runs)
    if not entries:
        raise ZsadError("no finished runs (results.json with evaluated targets) found in the given inputs")
    grouping = group(entries, group_by)
    _note_unfinished(grouping, run_dirs, runs)
    markdown = _markdown(grouping, len(runs), reference, group_by)
    rows = _csv_rows(grouping)
    csv_text = _csv_text(rows)

    out_dir = Path(out) if out else (default_out or Path("report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "report.md", out_dir / "report.csv", out_dir / "report.html"
    atomic_write_text(paths[0], markdown + "\n")
    atomic_write_text(paths[1], csv_text)
    tables = [(t, table_rows(grouping, m, reference), n) for t, m, n in _tables(reference, grouping)]
    atomic_write_text(paths[2], render_html(grouping, tables, markdown.splitlines()[0][2:], reference))
    if wandb_mode != "disabled":
        _log_to_wandb(rows, out_dir, wandb_group, wandb_mode, project)
    return Report(markdown, csv_text, *paths, len(runs), grouping.warnings)


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
