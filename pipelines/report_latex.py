r"""``zsad report --latex``: the report's tables as a LaTeX document (``report.tex``) in the papers' layout.

Datasets (or one dataset's categories) are rows, settings are columns, each cell holds the metric pair
``AUROC / AP`` or ``AUROC / AUPRO`` in percent; per row and metric the best mean is bold and the second
underlined (compared as printed, to one decimal, so ties share the mark). The standard deviation over
replicates follows in small type where n >= 2, the bootstrap interval where computed, and with
``--reference`` each dataset cell's difference from the published number. Each table is a self-contained
``table`` block between ``% ---`` comment lines, so that it can be pasted into a paper whose preamble has
``booktabs``, ``graphicx`` and the file's three-line ``\zsadfit`` macro (which scales a table down to the
line width only where it is wider); the whole file compiles on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.report_tables import MEAN_ROW, Row, Stat, Table, percent

if TYPE_CHECKING:
    from pipelines.report_grouping import Grouping

PREAMBLE = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs}
\usepackage{graphicx}
% \zsadfit{TABULAR}: the tabular as it is, or scaled down to the line width where it is wider
\newsavebox{\zsadbox}
\newcommand{\zsadfit}[1]{\sbox{\zsadbox}{#1}%
  \ifdim\wd\zsadbox>\linewidth\resizebox{\linewidth}{!}{\usebox{\zsadbox}}\else\usebox{\zsadbox}\fi}
\begin{document}
"""
METRIC_NAMES = {
    "image_auroc": "AUROC",
    "image_ap": "AP",
    "image_f1_max": "F1-max",
    "pixel_auroc": "AUROC",
    "pixel_ap": "AP",
    "pixel_aupr": "AUPR",
    "aupro": "AUPRO",
    "aupro_cflow": "AUPRO (cflow-style)",
}
_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "—": "---",
    "–": "--",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def escape(text: object) -> str:
    """Plain text as LaTeX (special characters and the few non-ASCII ones zsad's labels use)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def _ranks(row: Row, index: int) -> dict[int, str]:
    """Column -> ``best`` or ``second`` for metric ``index`` of a row, by the printed (rounded) means."""
    printed = {}
    for column, stats in enumerate(row.cells):
        if stats is not None and stats[index].mean is not None:
            printed[column] = round(100 * stats[index].mean, 1)
    if len(printed) < 2:
        return {}
    levels = sorted(set(printed.values()), reverse=True)
    marks = {c: "best" for c, v in printed.items() if v == levels[0]}
    if len(levels) > 1:
        marks.update({c: "second" for c, v in printed.items() if v == levels[1]})
    return marks


def _number(stat: Stat, mark: str | None, published: float | None) -> str:
    if stat.mean is None:
        return "--"
    text = percent(stat.mean).replace("-", "$-$")
    text = {"best": rf"\textbf{{{text}}}", "second": rf"\underline{{{text}}}"}.get(mark or "", text)
    small = []
    if stat.std is not None:
        small.append(rf"$\pm${percent(stat.std)}")
    if stat.interval is not None:
        small.append(f"[{percent(stat.interval[0])}, {percent(stat.interval[1])}]")
    if published is not None:
        small.append(f"({percent(stat.mean - published, signed=True).replace('-', '$-$')})")
    return text + "".join(rf"\,{{\scriptsize {s}}}" for s in small)


def _row_line(row: Row, metrics: tuple[str, ...]) -> str:
    marks = [_ranks(row, i) for i in range(len(metrics))]
    cells = []
    for column, stats in enumerate(row.cells):
        if stats is None:
            cells.append("")
            continue
        numbers = []
        for i, stat in enumerate(stats):
            # the published AUPRO is the cflow-style one: no difference from zsad's exact AUPRO (the
            # markdown marks it NOT comparable, the CSV leaves it out)
            reference = None
            if row.published is not None and metrics[i] != "aupro":
                reference = row.published[column][i]
            numbers.append(_number(stat, marks[i].get(column), reference))
        cells.append(" / ".join(numbers))
    return " & ".join([escape(row.label), *cells]) + r" \\"


def _caption(table: Table, reference: bool) -> str:
    pair = " / ".join(METRIC_NAMES.get(m, m) for m in table.metrics)
    level = "Image" if table.metrics[0].startswith("image") else "Pixel"
    where = escape(table.title.split(":")[0]) + ": " if table.row_header == "category" else ""
    counts = sorted({s.n for r in table.rows for stats in r.cells if stats for s in stats if s.n}) or [0]
    replicates = f"$n = {counts[0]}$" if len(counts) == 1 else f"$n = {counts[0]}$--${counts[-1]}$"
    caption = (
        f"{where}{level} level, {escape(pair)} (\\%): mean over {replicates} replicates, $\\pm$ standard "
        "deviation where $n \\geq 2$; best in bold, second underlined"
    )
    if any(s is not None and s[0].interval is not None for r in table.rows for s in r.cells):
        caption += "; [bootstrap percentile interval]"
    if reference and table.row_header == "dataset":
        caption += "; (difference from the published number)"
    return caption + "."


def render_table(table: Table, columns: list[str], label: str, reference: bool) -> str:
    """One ``table`` block: rows of ``table`` x ``columns``, booktabs rules, the category-mean row last."""
    head = " & ".join([escape(table.row_header.capitalize()), *(escape(c) for c in columns)]) + r" \\"
    body = []
    for row in table.rows:
        if table.row_header == "category" and row.label == MEAN_ROW:
            body.append(r"\midrule")
        body.append(_row_line(row, table.metrics))
    tabular = [
        rf"\begin{{tabular}}{{l{'c' * len(columns)}}}",
        r"\toprule",
        head,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    tabular = [r"\zsadfit{%", *tabular, "}"]
    return "\n".join(
        [
            f"% --- zsad report: {table.title} ---",
            r"\begin{table}[htbp]",
            r"\centering",
            rf"\caption{{{_caption(table, reference)}}}",
            rf"\label{{tab:{label}}}",
            *tabular,
            r"\end{table}",
            f"% --- end: {table.title} ---",
        ]
    )


def render_latex(
    grouping: Grouping,
    tables: list[Table],
    per_category: list[tuple[str, list[Table]]],
    reference: bool,
) -> str:
    """``report.tex``: the dataset tables, then each dataset's per-category tables, as one document."""
    blocks = []
    for table in tables:
        level = "image" if table.metrics[0].startswith("image") else "pixel"
        blocks.append(render_table(table, grouping.columns, f"zsad-{level}", reference))
    for row, row_tables in per_category:
        blocks.append("\\clearpage")  # at most a page of floats waits: LaTeX holds only 18
        for table in row_tables:
            level = "image" if table.metrics[0].startswith("image") else "pixel"
            label = "zsad-" + "".join(ch if ch.isalnum() else "-" for ch in row) + f"-{level}"
            blocks.append(render_table(table, grouping.columns, label, reference))
    return PREAMBLE + "\n\n".join(blocks) + "\n\\end{document}\n"
