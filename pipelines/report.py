"""Paper-style tables from finished runs: datasets x methods, image (AUROC, AP) and pixel (AUROC, AUPRO).

Runs of the same method, source and target (e.g. seeds) are averaged; the cell shows mean and, with
several runs, the standard deviation. Published numbers can be added as reference rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipelines.errors import ZsadError
from pipelines.published import SOURCE, published

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
    n_runs: int


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
    return run_dirs, default_out, group


def _load(run_dirs: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for run_dir in run_dirs:
        path = run_dir / "results.json"
        if path.is_file():
            runs.append(json.loads(path.read_text()))
    return runs


def aggregate(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, list[float]]]:
    """(dataset, method, source) -> metric -> values over runs."""
    cells: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for target in run.get("targets", {}).values():
            key = (target["dataset"], run["method"], run.get("source") or "-")
            for metric, value in target["mean"].items():
                if value is not None:
                    cells[key][metric].append(value)
    return cells


def _cell(values: list[float] | None) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f}±{100 * statistics.stdev(values):.1f}"


def build_report(
    inputs: list[str],
    out: str | None = None,
    reference: bool = False,
    wandb_mode: str = "offline",
    project: str = "zsad",
) -> Report:
    run_dirs, default_out, group = _collect_run_dirs(inputs)
    runs = _load(run_dirs)
    if not runs:
        raise ZsadError("no finished runs (results.json) found in the given inputs")
    cells = aggregate(runs)
    datasets = sorted({d for d, _, _ in cells})
    sources_per_method: dict[str, set[str]] = defaultdict(set)
    for _, method, source in cells:
        sources_per_method[method].add(source)
    columns = sorted({(m, s) for _, m, s in cells})
    labels = [m if len(sources_per_method[m]) == 1 else f"{m} (from {s})" for m, s in columns]

    lines = [f"# Results ({len(runs)} runs)", ""]
    rows_csv: list[dict[str, Any]] = []
    for title, metrics in TABLES:
        lines += [
            f"## {title}",
            "",
            "| dataset | " + " | ".join(labels) + " |",
            "|---" * (len(labels) + 1) + "|",
        ]
        for dataset in datasets:
            row = []
            for method, source in columns:
                values = cells.get((dataset, method, source), {})
                row.append(", ".join(_cell(values.get(m)) for m in metrics))
            lines.append(f"| {dataset} | " + " | ".join(row) + " |")
            if reference:
                ref = [published(dataset, method) for method, _ in columns]
                text = [", ".join(f"{100 * r[m]:.1f}" if m in r else "-" for m in metrics) for r in ref]
                lines.append(f"| {dataset} (published) | " + " | ".join(text) + " |")
        lines.append("")
    if reference:
        lines.append(f"Published rows: {SOURCE}.")
    for (dataset, method, source), values in sorted(cells.items()):
        for metric, numbers in sorted(values.items()):
            rows_csv.append(
                {
                    "dataset": dataset, "method": method, "source": source, "metric": metric,
                    "mean": statistics.fmean(numbers), "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
                    "n_runs": len(numbers), "published": published(dataset, method).get(metric),
                }
            )  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=["dataset", "method", "source", "metric", "mean", "std", "n_runs", "published"],
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(rows_csv)

    out_dir = Path(out) if out else (default_out or Path("report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join(lines)
    (out_dir / "report.md").write_text(markdown + "\n")
    (out_dir / "report.csv").write_text(buffer.getvalue())
    if wandb_mode != "disabled":
        _log_to_wandb(rows_csv, out_dir, group, wandb_mode, project)
    return Report(markdown, buffer.getvalue(), out_dir / "report.md", out_dir / "report.csv", len(runs))


def _log_to_wandb(
    rows: list[dict[str, Any]], out_dir: Path, group: str | None, mode: str, project: str
) -> None:
    import wandb

    columns = (
        list(rows[0])
        if rows
        else ["dataset", "method", "source", "metric", "mean", "std", "n_runs", "published"]
    )
    run = wandb.init(
        project=project, group=group, job_type="report", mode=mode, dir=str(out_dir), reinit="finish_previous"
    )
    run.log({"report/table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
    run.finish()
