"""MVTec AD and the datasets that copy its layout.

Layout: ``{cls}/train/good/*``, ``{cls}/test/{good,<defect>}/*``,
``{cls}/ground_truth/<defect>/{stem}_mask.png``. Masks are paired by file stem, never by sort order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import (
    NORMAL_DEFECT,
    DatasetIndex,
    DatasetSpec,
    SampleRecord,
    list_image_files,
    register_dataset,
)
from datamodules.parsers.common import IMAGE_EXTENSIONS, Findings, subdirs

__all__ = [
    "IMAGE_EXTENSIONS", "LAYOUT_DATASET", "MVTEC_CATEGORIES", "MVTEC_TEST_COUNTS", "parse_mvtec", "parse_mvtec_like",
]  # fmt: skip

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip

MVTEC_TEST_COUNTS = {
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89), "grid": (21, 57),
    "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93), "pill": (26, 141), "screw": (41, 119),
    "tile": (33, 84), "toothbrush": (12, 30), "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}  # fmt: skip

CATEGORY_FOLDERS = ("train", "test", "ground_truth")
LAYOUT_DATASET = "mvtec_layout"  # any data in MVTec AD's layout, categories discovered


def _find_mask(mask_dir: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            candidate = mask_dir / f"{stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def parse_mvtec_like(
    root: Path,
    dataset: str,
    categories: Sequence[str] | None,
    prompt_name: Callable[[str], str],
    normal_dir: str = NORMAL_DEFECT,
    mask_suffixes: Sequence[str] = ("_mask",),
    version: str = "official",
) -> DatasetIndex:
    """Index an MVTec-style root. ``categories=None`` discovers every folder that has ``test/``.

    All missing masks are collected and raised together; stray folders become warnings and masks
    without an image become problems on the index (``zsad data check`` reports both).
    """
    findings = Findings(dataset, root)
    if categories is None:
        present = [p.name for p in subdirs(root) if (p / "test").is_dir()]
        known = set(present)
    else:
        present = [c for c in categories if (root / c).is_dir()]
        known = set(categories)
    if not present:
        expected = f"category folders like {', '.join(categories[:3])}" if categories else "category folders"
        raise DatasetLayoutError(
            f"{root} does not look like a {dataset} root: expected {expected} with test/ inside"
        )
    for p in subdirs(root):
        if p.name not in known:
            findings.warn(f"ignored folder {p}: not a {dataset} category")
    records: list[SampleRecord] = []
    for category in present:
        name = prompt_name(category)
        cat_dir = root / category
        for p in subdirs(cat_dir):
            if p.name not in CATEGORY_FOLDERS:
                findings.warn(
                    f"ignored folder {p}: expected only {', '.join(CATEGORY_FOLDERS)} in a category"
                )
        used_masks: set[Path] = set()
        test_defects: set[str] = set()
        for split in ("train", "test"):
            split_dir = cat_dir / split
            if not split_dir.is_dir():
                if split == "test":
                    findings.error(f"missing folder {split_dir}")
                continue
            for defect_dir in subdirs(split_dir):
                defect = defect_dir.name
                is_normal = defect == normal_dir
                if split == "test" and not is_normal:
                    test_defects.add(defect)
                for image in list_image_files(defect_dir, IMAGE_EXTENSIONS):
                    mask = None
                    if not is_normal:
                        mask = _find_mask(cat_dir / "ground_truth" / defect, image.stem, mask_suffixes)
                        if mask is None and split == "test":
                            findings.error(
                                f"no mask for anomalous image {image} "
                                f"(expected {cat_dir / 'ground_truth' / defect / (image.stem + mask_suffixes[0])}.png)"
                            )
                        if mask is not None:
                            used_masks.add(mask)
                    records.append(
                        SampleRecord(
                            category=category,
                            prompt_name=name,
                            image_path=image,
                            mask_path=mask,
                            label=0 if is_normal else 1,
                            defect_type=NORMAL_DEFECT if is_normal else defect,
                            split=split,
                        )
                    )
        for gt_dir in subdirs(cat_dir / "ground_truth"):
            if gt_dir.name not in test_defects:
                findings.problem(f"mask folder {gt_dir} has no test folder {cat_dir / 'test' / gt_dir.name}")
                continue
            for mask in list_image_files(gt_dir, IMAGE_EXTENSIONS):
                if mask not in used_masks:
                    findings.problem(f"mask {mask} has no image in {cat_dir / 'test' / gt_dir.name}")
    index = DatasetIndex(dataset=dataset, root=root, records=records, has_masks=True, version=version)
    return findings.finish(index)


def _prompt_name(category: str) -> str:
    return category.replace("_", " ")


def parse_mvtec(root: Path) -> DatasetIndex:
    if root.is_dir() and not any((root / c).is_dir() for c in MVTEC_CATEGORIES):
        found = [p.name for p in subdirs(root) if (p / "test").is_dir()]
        if found:  # another dataset in this layout: named as such, never taken for MVTec AD
            raise DatasetLayoutError(
                f"{root} is in MVTec AD's layout but has none of MVTec AD's categories (found: "
                f"{', '.join(found[:5])}{', ...' if len(found) > 5 else ''}); for other data in this layout "
                f"use dataset {LAYOUT_DATASET} (zsad data check {LAYOUT_DATASET} --root ...; "
                f"targets=[{LAYOUT_DATASET}] targets.0.root=...; evaluate-maps --dataset {LAYOUT_DATASET})"
            )
    return parse_mvtec_like(root, "mvtec", MVTEC_CATEGORIES, prompt_name=_prompt_name)


def parse_mvtec_layout(root: Path) -> DatasetIndex:
    return parse_mvtec_like(root, LAYOUT_DATASET, None, prompt_name=_prompt_name, version="custom")


register_dataset(
    DatasetSpec(
        name="mvtec",
        parse=parse_mvtec,
        categories=MVTEC_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        expected_test_counts=MVTEC_TEST_COUNTS,
        description="MVTec AD (Bergmann et al., CVPR 2019), 15 industrial object and texture categories",
    )
)

register_dataset(
    DatasetSpec(
        name=LAYOUT_DATASET,
        parse=parse_mvtec_layout,
        categories=(),
        has_masks=True,
        has_normals=True,
        domain="industrial",
        description="your own data in MVTec AD's layout ({cls}/test/{good,defect}/, "
        "{cls}/ground_truth/{defect}/{stem}_mask.png); categories found under the root, no expected counts",
    )
)
