"""MVTec AD and the datasets that copy its layout.

Layout: ``{cls}/train/good/*``, ``{cls}/test/{good,<defect>}/*``,
``{cls}/ground_truth/<defect>/{stem}_mask.png``. Masks are paired by file stem, never by sort order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from datamodules.index import NORMAL_DEFECT, DatasetIndex, DatasetSpec, SampleRecord, list_image_files, register_dataset
from pipelines.errors import DatasetLayoutError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip

MVTEC_TEST_COUNTS = {
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89), "grid": (21, 57),
    "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93), "pill": (26, 141), "screw": (41, 119),
    "tile": (33, 84), "toothbrush": (12, 30), "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}  # fmt: skip


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
    """Index an MVTec-style root. ``categories=None`` discovers every folder that has ``test/``."""
    if categories is None:
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
    else:
        present = [c for c in categories if (root / c).is_dir()]
    if not present:
        expected = f"category folders like {', '.join(categories[:3])}" if categories else "category folders"
        raise DatasetLayoutError(
            f"{root} does not look like a {dataset} root: expected {expected} with test/ inside"
        )
    records: list[SampleRecord] = []
    for category in present:
        name = prompt_name(category)
        cat_dir = root / category
        for split in ("train", "test"):
            split_dir = cat_dir / split
            if not split_dir.is_dir():
                if split == "test":
                    raise DatasetLayoutError(f"{dataset}: missing folder {split_dir}")
                continue
            for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                defect = defect_dir.name
                is_normal = defect == normal_dir
                for image in list_image_files(defect_dir, IMAGE_EXTENSIONS):
                    mask = None
                    if not is_normal:
                        mask = _find_mask(cat_dir / "ground_truth" / defect, image.stem, mask_suffixes)
                        if mask is None and split == "test":
                            raise DatasetLayoutError(
                                f"{dataset}: no mask for anomalous image {image} "
                                f"(expected {cat_dir / 'ground_truth' / defect / (image.stem + mask_suffixes[0])}.png)"
                            )
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
    return DatasetIndex(dataset=dataset, root=root, records=records, has_masks=True, version=version)


def parse_mvtec(root: Path) -> DatasetIndex:
    return parse_mvtec_like(root, "mvtec", MVTEC_CATEGORIES, prompt_name=lambda c: c.replace("_", " "))


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
