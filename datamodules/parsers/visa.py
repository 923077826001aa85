"""VisA (Zou et al., ECCV 2022), indexed from the official split file.

Layout: ``split_csv/1cls.csv`` with columns ``object, split, label, image, mask``; ``label`` is
``normal`` or ``anomaly`` and paths are relative to the root, e.g.
``candle/Data/Images/Anomaly/000.JPG`` and ``candle/Data/Masks/Anomaly/000.png``. The CSV, not a folder
scan, defines the split: the zero-shot papers evaluate on its test rows. Mask values are class indices
(1, 2, ...), so any non-zero pixel is anomalous (``load_mask``: ``convert("L") > 0``, as the official code).
"""

from __future__ import annotations

import csv
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import NORMAL_DEFECT, DatasetIndex, DatasetSpec, SampleRecord, register_dataset
from datamodules.parsers.common import Findings, warn_unexpected

VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip

VISA_TEST_COUNTS = {
    "candle": (100, 100), "capsules": (60, 100), "cashew": (50, 100), "chewinggum": (50, 100),
    "fryum": (50, 100), "macaroni1": (100, 100), "macaroni2": (100, 100), "pcb1": (100, 100),
    "pcb2": (100, 100), "pcb3": (101, 100), "pcb4": (101, 100), "pipe_fryum": (50, 100),
}  # fmt: skip

SPLIT_CSV = Path("split_csv") / "1cls.csv"
_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}


def parse_visa(root: Path) -> DatasetIndex:
    findings = Findings("visa", root)
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        raise DatasetLayoutError(
            f"visa: {csv_path} not found; unpack the official VisA_20220922.tar (it contains split_csv/1cls.csv) "
            "and point the dataset root (source.root / targets.N.root; --root for zsad data check) at the folder that holds split_csv/"
        )
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in reader.fieldnames or []]
        missing = [c for c in _COLUMNS if c not in fields]
        if missing:
            raise DatasetLayoutError(f"visa: {csv_path} lacks columns {missing} (has {fields})")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]

    by_category: dict[str, list[SampleRecord]] = {}
    for line, row in enumerate(rows, start=2):
        category, split, label_name = row["object"], row["split"], row["label"]
        where = f"{csv_path.name} line {line}"
        if label_name not in _LABELS:
            findings.error(f"{where}: label '{label_name}' is neither 'normal' nor 'anomaly'")
            continue
        label = _LABELS[label_name]
        image = root / row["image"]
        if not image.is_file():
            findings.error(f"{where}: image {image} does not exist")
            continue
        mask = root / row["mask"] if row["mask"] else None
        if label == 1 and mask is None:
            findings.error(f"{where}: anomalous image {image} has no mask in the CSV")
        elif mask is not None and not mask.is_file():
            findings.error(f"{where}: mask {mask} of {image} does not exist")
            mask = None
        by_category.setdefault(category, []).append(
            SampleRecord(
                category=category,
                prompt_name=category,
                image_path=image,
                mask_path=mask if label == 1 else None,
                label=label,
                # The anomalies of VisA are not typed in the 1cls split; the folder name is all there is.
                defect_type=NORMAL_DEFECT if label == 0 else "anomaly",
                split=split,
            )
        )
    for category in by_category:
        if category not in VISA_CATEGORIES:
            findings.warn(f"{csv_path.name} lists an unknown category '{category}'")
    warn_unexpected(findings, root, (*VISA_CATEGORIES, "split_csv"))
    order = sorted(by_category, key=lambda c: (VISA_CATEGORIES.index(c) if c in VISA_CATEGORIES else 99, c))
    records = [r for c in order for r in by_category[c]]
    return findings.finish(DatasetIndex(dataset="visa", root=root, records=records, has_masks=True))


register_dataset(
    DatasetSpec(
        name="visa",
        parse=parse_visa,
        categories=VISA_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        expected_test_counts=VISA_TEST_COUNTS,
        description="VisA (Zou et al., ECCV 2022), 12 objects incl. complex and multi-instance PCBs; split_csv/1cls.csv",
    )
)
