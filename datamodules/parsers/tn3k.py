"""TN3K (Gong et al., ISBI 2021), thyroid nodule ultrasound.

Layout: ``test-image/`` and ``test-mask/`` (plus ``trainval-image/``/``trainval-mask/``, indexed as
``train``). Images are single-channel and are loaded as RGB. Every image has a nodule: no normal
images, so no image-level metrics.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.common import PairedSplit, parse_paired_folders

TN3K_SPLITS = (
    PairedSplit(
        "test",
        ("test-image",),
        ("test-mask",),
        hint="point the dataset root (source.root / targets.N.root; --root for zsad data check) at the tn3k folder of the archive",
    ),
    PairedSplit("train", ("trainval-image",), ("trainval-mask",), required=False),
)


def parse_tn3k(root: Path) -> DatasetIndex:
    return parse_paired_folders(root, "tn3k", "tn3k", "thyroid", "nodule", TN3K_SPLITS)


register_dataset(
    DatasetSpec(
        name="tn3k",
        parse=parse_tn3k,
        categories=("tn3k",),
        has_masks=True,
        has_normals=False,
        domain="medical",
        expected_test_counts={"tn3k": (0, 614)},
        description="TN3K (Gong et al., 2021), thyroid ultrasound nodules; test-image/ + test-mask/, grey images",
    )
)
