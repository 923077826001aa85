"""ISIC: ISBI 2016 challenge, part 1 (lesion segmentation), test set.

Layout (the two official zips unpacked side by side): ``ISBI2016_ISIC_Part1_Test_Data/*.jpg`` and
``ISBI2016_ISIC_Part1_Test_GroundTruth/{stem}_Segmentation.png``. Every image shows a lesion, so all
are anomalous and there are no image-level metrics. The training folders
(``ISBI2016_ISIC_Part1_Training_Data``/``..._GroundTruth``), when present, are indexed as ``train``.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.common import PairedSplit, parse_paired_folders

ISIC_CATEGORY = "isic"
ISIC_PROMPT = "skin"
ISIC_SPLITS = (
    PairedSplit(
        "test",
        ("ISBI2016_ISIC_Part1_Test_Data",),
        ("ISBI2016_ISIC_Part1_Test_GroundTruth",),
        hint="unzip ISBI2016_ISIC_Part1_Test_Data.zip and ISBI2016_ISIC_Part1_Test_GroundTruth.zip into the root",
    ),
    PairedSplit(
        "train",
        ("ISBI2016_ISIC_Part1_Training_Data",),
        ("ISBI2016_ISIC_Part1_Training_GroundTruth",),
        required=False,
    ),
)


def parse_isic(root: Path) -> DatasetIndex:
    return parse_paired_folders(
        root, "isic", ISIC_CATEGORY, ISIC_PROMPT, "lesion", ISIC_SPLITS, mask_suffix="_Segmentation"
    )


register_dataset(
    DatasetSpec(
        name="isic",
        parse=parse_isic,
        categories=(ISIC_CATEGORY,),
        has_masks=True,
        has_normals=False,
        domain="medical",
        expected_test_counts={ISIC_CATEGORY: (0, 379)},
        description="ISIC / ISBI 2016 part 1 test set, skin lesions; *_Segmentation.png masks; no normal images",
    )
)
