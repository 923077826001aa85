"""MVTec AD 2 (Heckler-Kram et al., 2025), 8 scenarios with transparent, reflective and bulk objects.

Layout of the official archives (and of MVTec's own dataset class, ``mvtec_ad_2_public_offline.py``)::

    {cls}/train/good/*.png
    {cls}/validation/good/*.png
    {cls}/test_public/{good,bad}/*.png
    {cls}/test_public/ground_truth/bad/{stem}_mask.png
    {cls}/test_private/{NNN}_regular.png          # no ground truth
    {cls}/test_private_mixed/{NNN}_mixed.png      # no ground truth (seen and unseen lighting)

``test_public`` is the split zsad evaluates (``test``); ``train/good`` and ``validation/good`` are normal
images (``train``). The private test sets have no ground truth and are never evaluated: MVTec's evaluation
server scores anomaly images of them, which ``zsad predict --submission mvtec_ad2`` writes
(docs/datasets.md, MVTec AD 2). They are not indexed; their file counts are compared with the ones MVTec's
upload checker requires, so that an incomplete copy shows up in ``zsad data check``.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import NORMAL_DEFECT, DatasetIndex, DatasetSpec, list_image_files, register_dataset
from datamodules.parsers.common import IMAGE_EXTENSIONS, Findings, make_records, pair_by_stem, subdirs

MVTEC_AD2_CATEGORIES = (
    "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts",
)  # fmt: skip
PRIVATE_SPLITS = ("test_private", "test_private_mixed")
# Images per object in each private test split, as MVTec's upload checker requires them
# (MVTecAD2_public_code_utils/utils.py, OBJECT_FILE_COUNTER): test_private and test_private_mixed alike.
PRIVATE_COUNTS = {
    "can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277,
    "sheet_metal": 142, "vial": 276, "wallplugs": 232, "walnuts": 228,
}  # fmt: skip
_FOLDERS = ("train", "validation", "test_public", *PRIVATE_SPLITS)


def _prompt_name(category: str) -> str:
    return category.replace("_", " ")


def parse_mvtec_ad2(root: Path) -> DatasetIndex:
    present = [c for c in MVTEC_AD2_CATEGORIES if (root / c).is_dir()]
    if not present:
        raise DatasetLayoutError(
            f"mvtec_ad2: {root} holds none of MVTec AD 2's category folders ({', '.join(MVTEC_AD2_CATEGORIES)}); "
            "point the root at the folder the archives were unpacked into"
        )
    findings = Findings("mvtec_ad2", root)
    for p in subdirs(root):
        if p.name not in MVTEC_AD2_CATEGORIES:
            findings.warn(f"ignored folder {p}: not a mvtec_ad2 category")
    records = []
    for category in present:
        cat_dir, name = root / category, _prompt_name(category)
        for p in subdirs(cat_dir):
            if p.name not in _FOLDERS:
                findings.warn(f"ignored folder {p}: expected only {', '.join(_FOLDERS)} in a category")
        for folder in ("train", "validation"):
            images = list_image_files(cat_dir / folder / NORMAL_DEFECT, IMAGE_EXTENSIONS)
            records += make_records(((p, None) for p in images), category, name, 0, "", "train")
        test = cat_dir / "test_public"
        if not test.is_dir():
            findings.error(f"missing folder {test}")
            continue
        for p in subdirs(test):
            if p.name not in (NORMAL_DEFECT, "bad", "ground_truth"):
                findings.warn(f"ignored folder {p}: test_public holds only good/, bad/ and ground_truth/")
        good = list_image_files(test / NORMAL_DEFECT, IMAGE_EXTENSIONS)
        records += make_records(((p, None) for p in good), category, name, 0, "", "test")
        pairs = pair_by_stem(test / "bad", test / "ground_truth" / "bad", findings, mask_suffix="_mask")
        records += make_records(pairs, category, name, 1, "bad", "test")
        for split in PRIVATE_SPLITS:
            n = len(list_image_files(cat_dir / split, IMAGE_EXTENSIONS))
            if n != PRIVATE_COUNTS[category]:
                findings.problem(
                    f"{cat_dir / split} holds {n} images, MVTec's upload checker expects "
                    f"{PRIVATE_COUNTS[category]} (a submission for it would be refused)"
                )
    return findings.finish(DatasetIndex(dataset="mvtec_ad2", root=root, records=records, has_masks=True))


register_dataset(
    DatasetSpec(
        name="mvtec_ad2",
        parse=parse_mvtec_ad2,
        categories=MVTEC_AD2_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        description="MVTec AD 2 (Heckler-Kram et al., 2025), 8 scenarios; test_public evaluated, "
        "test_private(_mixed) only predicted for MVTec's server",
    )
)
