"""HeadCT (Kaggle "Head CT - hemorrhage"), image-level labels only.

Layout: ``head_ct/*.png`` (the Kaggle archive nests ``head_ct/head_ct/``) and ``labels.csv`` with
columns ``id, hemorrhage`` (note the space). Ids are integers while file stems are zero-padded
(``0`` vs ``000.png``), so both are compared as numbers. No masks: no pixel-level metrics.
"""

from __future__ import annotations

import csv
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import DatasetIndex, DatasetSpec, list_image_files, register_dataset
from datamodules.parsers.common import IMAGE_EXTENSIONS, Findings, make_records, require_dir, warn_unexpected

HEADCT_CATEGORY = "headct"
HEADCT_PROMPT = "brain"


def _image_dir(root: Path) -> Path:
    folder = require_dir(
        root, "head_ct", dataset="headct", hint="unpack the Kaggle archive (head_ct/ and labels.csv)"
    )
    nested = folder / "head_ct"
    return nested if nested.is_dir() and not list_image_files(folder, IMAGE_EXTENSIONS) else folder


def _id(text: str) -> int | None:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return int(float(text)) if text.replace(".", "", 1).isdigit() else None


def parse_headct(root: Path) -> DatasetIndex:
    findings = Findings("headct", root)
    image_dir = _image_dir(root)
    warn_unexpected(findings, root, ("head_ct",))
    csv_path = next((p for p in (root / "labels.csv", image_dir.parent / "labels.csv") if p.is_file()), None)
    if csv_path is None:
        raise DatasetLayoutError(f"headct: labels.csv not found in {root}; it comes with the Kaggle archive")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if "id" not in header or "hemorrhage" not in header:
            raise DatasetLayoutError(f"headct: {csv_path} must have columns 'id, hemorrhage', found {header}")
        id_col, label_col = header.index("id"), header.index("hemorrhage")
        labels: dict[int, int] = {}
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            key = _id(row[id_col])
            value = row[label_col].strip() if len(row) > label_col else ""
            if key is None or value not in ("0", "1"):
                findings.error(
                    f"{csv_path.name} line {line}: expected an integer id and hemorrhage 0 or 1, got {row}"
                )
                continue
            if key in labels:
                findings.error(f"{csv_path.name} line {line}: id {key} listed twice")
            labels[key] = int(value)

    images: dict[int, Path] = {}
    for image in list_image_files(image_dir, IMAGE_EXTENSIONS):
        key = _id(image.stem)
        if key is None:
            findings.problem(f"image {image} has no numeric name, so no label; skipped")
        elif key in images:
            findings.problem(f"images {images[key]} and {image} have the same id {key}; using the first")
        else:
            images[key] = image
    for key in sorted(set(labels) - set(images)):
        findings.error(f"{csv_path.name} lists id {key} but {image_dir} has no image {key:03d}.png")
    for key in sorted(set(images) - set(labels)):
        findings.problem(f"image {images[key]} is not in {csv_path.name}; skipped")
    records = []
    for label, defect in ((0, ""), (1, "hemorrhage")):
        items = [(images[k], None) for k in sorted(images) if labels.get(k) == label]
        records += make_records(items, HEADCT_CATEGORY, HEADCT_PROMPT, label, defect)
    return findings.finish(DatasetIndex(dataset="headct", root=root, records=records, has_masks=False))


register_dataset(
    DatasetSpec(
        name="headct",
        parse=parse_headct,
        categories=(HEADCT_CATEGORY,),
        has_masks=False,
        has_normals=True,
        domain="medical",
        expected_test_counts={HEADCT_CATEGORY: (100, 100)},
        description="HeadCT (Kaggle), head CT slices with/without hemorrhage; labels.csv; no masks",
    )
)
