"""MPDD (Jezek et al., ICUMT 2021): metal parts, MVTec AD layout (``{cls}/test/{good,<defect>}``,
``{cls}/ground_truth/<defect>/{stem}_mask.png``), so the MVTec parser is reused."""

from __future__ import annotations

from pathlib import Path

from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.mvtec import parse_mvtec_like

MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")

# [verify] per-category counts as commonly reported; totals 176 / 282.
MPDD_TEST_COUNTS = {
    "bracket_black": (32, 47), "bracket_brown": (26, 51), "bracket_white": (30, 30),
    "connector": (30, 14), "metal_plate": (26, 71), "tubes": (32, 69),
}  # fmt: skip


def parse_mpdd(root: Path) -> DatasetIndex:
    # Prompt name = class name as on disk (docs/datasets.md); only MVTec's replace "_" by a space.
    return parse_mvtec_like(
        root, "mpdd", MPDD_CATEGORIES, prompt_name=lambda c: c, mask_suffixes=("_mask", "")
    )


register_dataset(
    DatasetSpec(
        name="mpdd",
        parse=parse_mpdd,
        categories=MPDD_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        expected_test_counts=MPDD_TEST_COUNTS,
        counts_verified=False,
        description="MPDD (Jezek et al., 2021), 6 painted metal parts; MVTec AD layout",
    )
)
