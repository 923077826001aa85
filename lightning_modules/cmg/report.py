"""A markdown table comparing runs (the CMG ablation: baseline, +CMER, +CMLE, +both).

Reads each run's ``results.json`` (``results["targets"][name]["mean"][metric]``); one row per run and
target, metrics in percent, and the change of each metric against the first run (the baseline).
Usage: ``python -m lightning_modules.cmg.report RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_modules.metrics.evaluation_result import METRIC_NAMES as METRICS
from lightning_modules.metrics.evaluation_result import as_percent

LABELS = {
    "image_auroc": "img AUROC", "image_ap": "img AP", "image_f1_max": "img F1",
    "pixel_auroc": "px AUROC", "pixel_ap": "px AP", "aupro": "AUPRO",
}  # fmt: skip


def _cell(value: float | None, reference: float | None) -> str:
    if value is None:
        return "-"
    text = as_percent(value)
    if reference is not None:
        text += f" ({100 * (value - reference):+.1f})"
    return text


def ablation_table(run_dirs: Sequence[str | Path], metrics: Sequence[str] = METRICS) -> str:
    """Markdown rows ``run | target | metrics...``; a run is named by its experiment. Cells of later runs
    carry the difference to the first run on the same target in parentheses."""
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in run_dirs]
    header = ["run", "target", *(LABELS.get(m, m) for m in metrics)]
    rows = [f"| {' | '.join(header)} |", f"|{'|'.join(['---'] * 2 + ['---:'] * len(metrics))}|"]
    reference = {target: payload["mean"] for target, payload in runs[0]["targets"].items()} if runs else {}
    for i, (run_dir, results) in enumerate(zip(run_dirs, runs, strict=True)):
        for target, payload in results["targets"].items():
            base = reference.get(target, {}) if i > 0 else {}
            cells = [_cell(payload["mean"].get(m), base.get(m)) for m in metrics]
            rows.append(
                f"| {results.get('experiment') or Path(run_dir).name} | {target} | {' | '.join(cells)} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    print(ablation_table(sys.argv[1:]))
