"""DAGM 2007 (the Kaggle upload ``DAGM_KaggleUpload``), 10 statistically textured surfaces.

Raw layout: ``Class{1..10}/{Train,Test}/*.PNG`` with weak labels (coarse ellipses)
``Class{N}/{Train,Test}/Label/{stem}_label.PNG`` (plus ``Labels.txt``). Split folders are capitalised
and the extension is upper case, which breaks naive scanners; here folders are matched
case-insensitively. An image is anomalous iff its label file exists.

Which images are the test set is a choice (parser option ``version``, recorded in the results):

``official`` (default)
    DAGM's own ``Test`` folders; ``Train`` is indexed as ``train``. AnomalyCLIP's generator
    (``generate_dataset_json/DAGM.py``) indexes exactly this rule for both folders, but writes them under
    the keys ``Train``/``Test`` while its test script reads ``test``, so its code does not say which folder
    the published table used. It counts (and prints) the ``Test`` folders only, and those hold 6996 normal /
    1054 defective images, the figures quoted for AnomalyCLIP's dataset table: this default follows that,
    a *reconstruction* in so far as the table itself could not be re-read here (docs/datasets.md).
``adaclip-balanced``
    AdaCLIP's conversion (``data_preprocess/dagm-pre.py``): per class and per folder (``Train`` and
    ``Test``), every labelled image and as many normal images go to the test set, the other normals to
    ``train``, pooled over both folders. AdaCLIP takes the normals in ``os.listdir`` order (filesystem
    dependent) and copies both folders into one, where a file name present in both would overwrite the
    other; here the normals are taken in sorted name order and nothing is overwritten: also a
    *reconstruction*.

A copy already converted to MVTec AD layout (``Class{N}/test/{good,<defect>}``) is indexed with the
MVTec parser and recorded as version ``mvtec-like``.
"""

from __future__ import annotations

import re
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.common import (
    Findings,
    child_dir,
    make_records,
    pair_by_stem,
    subdirs,
    warn_unexpected,
)
from datamodules.parsers.mvtec import parse_mvtec_like

DAGM_CATEGORIES = tuple(f"Class{i}" for i in range(1, 11))
DAGM_PROMPT = "texture"
# Defective images per class in DAGM's Test and Train folders: the counts NVIDIA's DeepLearningExamples
# checks its DAGM 2007 copy against (TensorFlow/Segmentation/UNet_Industrial/preprocess_dagm2007.py,
# EXPECTED_DEFECTIVE_SAMPLES_PER_CLASS). DAGM's description gives 1150 images per class 1-6 (1000 normal,
# 150 defective) and 2300 per class 7-10 (2000, 300), half of them in each folder: 575 / 1150 images per folder.
DAGM_DEFECTIVE = {
    "Test": (71, 84, 84, 68, 80, 67, 150, 150, 150, 150),
    "Train": (79, 66, 66, 82, 70, 83, 150, 150, 150, 150),
}
DAGM_FOLDER_SIZE = tuple(575 if i <= 6 else 1150 for i in range(1, 11))
# official: the Test folders, 6996 / 1054 in all; [reconstruction] the normals assume equal halves.
DAGM_TEST_COUNTS = {
    c: (size - defective, defective)
    for c, size, defective in zip(DAGM_CATEGORIES, DAGM_FOLDER_SIZE, DAGM_DEFECTIVE["Test"], strict=True)
}
# adaclip-balanced without AdaCLIP's overwriting: all 150 / 300 defects of both folders and as many normals
ADACLIP_TEST_COUNTS = {
    c: (test + train, test + train)
    for c, test, train in zip(DAGM_CATEGORIES, DAGM_DEFECTIVE["Test"], DAGM_DEFECTIVE["Train"], strict=True)
}
_CLASS = re.compile(r"class(\d+)", re.IGNORECASE)
VERSIONS = ("official", "adaclip-balanced")


def _class_number(path: Path) -> int:
    match = _CLASS.fullmatch(path.name)
    return int(match.group(1)) if match else -1


def _is_converted(class_dir: Path) -> bool:
    test = child_dir(class_dir, "test")
    return test is not None and (test / "good").is_dir()


def parse_dagm(root: Path, version: str = "official") -> DatasetIndex:
    if version not in VERSIONS:
        raise DatasetLayoutError(f"dagm: option version must be one of {VERSIONS}, got {version!r}")
    class_dirs = sorted((p for p in subdirs(root) if _CLASS.fullmatch(p.name)), key=_class_number)
    if not class_dirs:
        raise DatasetLayoutError(
            f"dagm: no Class1..Class10 folders under {root}; point the dataset root (source.root / targets.N.root; --root for zsad data check) at the unpacked DAGM_KaggleUpload folder"
        )
    if any(_is_converted(d) for d in class_dirs):
        return parse_mvtec_like(root, "dagm", None, prompt_name=lambda c: DAGM_PROMPT, version="mvtec-like")

    findings = Findings("dagm", root)
    warn_unexpected(findings, root, [d.name for d in class_dirs])
    records = []
    for class_dir in class_dirs:
        warn_unexpected(findings, class_dir, ("Train", "Test"))
        for folder, split in (("Test", "test"), ("Train", "train")):
            split_dir = child_dir(class_dir, folder)
            if split_dir is None:
                if split == "test":
                    findings.error(f"missing folder {class_dir / folder}")
                continue
            warn_unexpected(findings, split_dir, ("Label",))
            label_dir = child_dir(split_dir, "Label")
            pairs = pair_by_stem(split_dir, label_dir, findings, mask_suffix="_label", require_masks=False)
            normal = sorted((image, None) for image, mask in pairs if mask is None)
            anomalous = [(image, mask) for image, mask in pairs if mask is not None]
            if version == "adaclip-balanced":  # as many normals as defects to the test set, from each folder
                test_normal, train_normal = normal[: len(anomalous)], normal[len(anomalous) :]
                records += make_records(test_normal, class_dir.name, DAGM_PROMPT, 0, "", "test")
                records += make_records(train_normal, class_dir.name, DAGM_PROMPT, 0, "", "train")
                records += make_records(anomalous, class_dir.name, DAGM_PROMPT, 1, "defect", "test")
                continue
            records += make_records(normal, class_dir.name, DAGM_PROMPT, 0, "", split)
            records += make_records(anomalous, class_dir.name, DAGM_PROMPT, 1, "defect", split)
    index = DatasetIndex(dataset="dagm", root=root, records=records, has_masks=True, version=version)
    return findings.finish(index)


register_dataset(
    DatasetSpec(
        name="dagm",
        parse=parse_dagm,
        categories=DAGM_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        expected_test_counts=DAGM_TEST_COUNTS,
        version_test_counts={"official": DAGM_TEST_COUNTS, "adaclip-balanced": ADACLIP_TEST_COUNTS},
        counts_verified=False,  # defects per folder as NVIDIA counts them; normals from equal halves
        description="DAGM 2007 (Kaggle upload), 10 synthetic textures; Train/Test + Label/*_label.PNG, weak masks",
    )
)
