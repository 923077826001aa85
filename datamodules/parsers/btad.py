"""BTAD (Mishra et al., 2021), the ``BTech_Dataset_transformed`` release.

Layout: ``{01,02,03}/train/ok``, ``{cls}/test/{ok,ko}``, ``{cls}/ground_truth/ko/{stem}.<ext>``. The
normal folder is ``ok``, not ``good``, and images and masks mix ``.bmp`` and ``.png``, so masks are
looked up by stem with any extension (MVTec parser with ``normal_dir="ok"``).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.mvtec import parse_mvtec_like

BTAD_CATEGORIES = ("01", "02", "03")
BTAD_TEST_COUNTS = {"01": (21, 49), "02": (30, 200), "03": (400, 41)}  # [verify] totals 451 / 290


def parse_btad(root: Path) -> DatasetIndex:
    return parse_mvtec_like(
        root,
        "btad",
        BTAD_CATEGORIES,
        prompt_name=lambda c: "product",
        normal_dir="ok",
        mask_suffixes=("", "_mask"),
    )


register_dataset(
    DatasetSpec(
        name="btad",
        parse=parse_btad,
        categories=BTAD_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        expected_test_counts=BTAD_TEST_COUNTS,
        counts_verified=False,
        description="BTAD / BTech (Mishra et al., 2021), 3 industrial products; ok/ko folders, .bmp and .png",
    )
)
