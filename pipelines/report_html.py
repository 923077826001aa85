"""The report as one self-contained HTML page: inline CSS, the tables, warnings, and the curves (figures
comparing the settings, each setting's ``RUN/plots/{target}/{category}/curves.png``) as data URIs."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.report_tables import Table, published_sources, text_rows

if TYPE_CHECKING:
    from pipelines.report_grouping import Grouping

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.published td { color: #666; font-style: italic; }
.warning { color: #a40; }
.note { color: #555; }
figure { display: inline-block; margin: 0.4em; text-align: center; font-size: 0.8em; }
figure img { max-width: 360px; display: block; }
figure img.wide { max-width: 900px; }
details { margin: 0.6em 0; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(table: Table, columns: list[str], level: str = "h2") -> list[str]:
    out = [f"<{level}>{_e(table.title)}</{level}>", "<table>"]
    out.append(
        f"<tr><th>{_e(table.row_header)}</th>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
    )
    for label, texts in text_rows(table):
        css = ' class="published"' if label.endswith("(published)") else ""
        out.append(f"<tr{css}><td>{_e(label)}</td>" + "".join(f"<td>{_e(t)}</td>" for t in texts) + "</tr>")
    out.append("</table>")
    if table.note:
        out.append(f'<p class="note">{_e(table.note)}</p>')
    return out


def paragraph(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def comparison_html(title: str, about: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """The paired comparison's section (the rows as report.md shows them)."""
    out = [f"<h2>{_e(title)}</h2>", paragraph(about), "<table>"]
    out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return [*out, "</table>"]


def _link(path: Path, out_dir: Path | None) -> str:
    """An ``<a>`` to a file of a run folder, relative to the report's folder (so that the pair can move)."""
    target = os.path.relpath(path.resolve(), out_dir) if out_dir is not None else path.as_posix()
    return f'<a href="{_e(Path(target).as_posix())}">{_e(path.name)}</a>'


def _curves(grouping: Grouping, out_dir: Path | None) -> list[str]:
    """The settings compared in one figure per target and category, then per setting and category its
    first replicate's ``curves.png`` (embedded) and links to every replicate's curves and gallery (not
    embedded: about 0.5 MB each)."""
    from pipelines.report_curves import comparison_figures, plot_folders

    out = ["<h2>Curves</h2>"]
    for caption, png in comparison_figures(grouping):
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure><img class="wide" src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
        )
    for (row, column), cell in sorted(grouping.cells.items()):
        folders = [(e, plot_folders(e)) for e in cell.entries]
        if not any(f for _, f in folders):
            continue
        method = grouping.column_method[column]
        seeds = ", ".join(e.run.seed_label for e in cell.entries)
        out.append(f"<details><summary>{_e(row)} / {_e(column)} ({_e(method)}; seeds {_e(seeds)})</summary>")
        first, first_folders = folders[0]
        for category, folder in first_folders.items():
            picture = folder / "curves.png"
            if picture.is_file():
                caption = f"{method}, run {first.run.run_dir.name} (seed {first.run.seed_label}): {row} / {category}"
                out.append(
                    f'<figure><img src="{_data_uri(picture)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
                )
        items = []
        for entry, per_category in folders:
            for category, folder in per_category.items():
                links = [
                    _link(folder / name, out_dir)
                    for name in ("curves.png", "gallery.png")
                    if (folder / name).is_file()
                ]
                if links:
                    items.append(
                        f"<li>{_e(entry.run.run_dir.name)} (seed {_e(entry.run.seed_label)}) {_e(category)}: "
                        + ", ".join(links)
                        + "</li>"
                    )
        if items:
            out += [
                '<p class="note">Pictures of every run (curves and galleries):</p>',
                "<ul>",
                *items,
                "</ul>",
            ]
        out.append("</details>")
    if len(out) == 1:
        out.append('<p class="note">No run has curve pictures (RUN/plots/).</p>')
    return out


def render_html(
    grouping: Grouping,
    tables: list[Table],
    per_category: list[tuple[str, list[Table]]],
    title: str,
    reference: bool,
    cells: str,
    extra: list[str] | None = None,
    out_dir: Path | None = None,
) -> str:
    """The page; ``extra``: HTML blocks placed after the tables (the paired comparisons)."""
    body = [f"<h1>{_e(title)}</h1>", f"<p>Cells: {_e(cells)}.</p>"]
    body += ["<table>", "<tr><th>setting</th><th>seeds</th><th>keys</th></tr>"]
    for column in grouping.columns:
        seeds = ", ".join(map(str, grouping.column_seeds[column]))
        body.append(
            f"<tr><td>{_e(column)}</td><td>{_e(seeds)}</td><td>{_e(grouping.column_keys[column])}</td></tr>"
        )
    body.append("</table>")
    for table in tables:
        body += _table(table, grouping.columns)
    if reference:
        body.append(f'<p class="note">Published rows: {_e(published_sources(grouping))}.</p>')
    for row, row_tables in per_category:
        body.append(f"<details><summary>Per category: {_e(row)}</summary>")
        for table in row_tables:
            body += _table(table, grouping.columns, "h3")
        body.append("</details>")
    body += extra or []
    if grouping.warnings:
        body += [
            "<h2>Warnings</h2>",
            "<ul>",
            *(f'<li class="warning">{_e(w)}</li>' for w in grouping.warnings),
            "</ul>",
        ]
    if grouping.notes:
        body += [
            "<h2>Notes</h2>",
            "<ul>",
            *(f'<li class="note">{_e(n)}</li>' for n in grouping.notes),
            "</ul>",
        ]
    body += _curves(grouping, out_dir)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
