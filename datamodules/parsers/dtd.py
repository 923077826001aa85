"""DTD-Synthetic (Aota et al., WACV 2023): DTD textures with synthetic defects, MVTec AD layout with
``test/{good,bad}`` and ``ground_truth/bad/{stem}_mask.png``; the MVTec parser is reused."""

from __future__ import annotations

from pathlib import Path

from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.mvtec import parse_mvtec_like

DTD_CATEGORIES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)  # fmt: skip


def parse_dtd(root: Path) -> DatasetIndex:
    return parse_mvtec_like(root, "dtd", DTD_CATEGORIES, prompt_name=lambda c: c, mask_suffixes=("_mask", ""))


register_dataset(
    DatasetSpec(
        name="dtd",
        parse=parse_dtd,
        categories=DTD_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        expected_test_total=(357, 947),  # [verify] per-category counts not confirmed
        counts_verified=False,
        description="DTD-Synthetic (Aota et al., WACV 2023), 12 textures with synthetic defects; MVTec AD layout",
    )
)
