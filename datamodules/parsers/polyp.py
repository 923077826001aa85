"""Colonoscopy polyp segmentation sets: CVC-ClinicDB, CVC-ColonDB, Kvasir-SEG and Endo (EndoTect 2020).

Layout: ``images/`` and ``masks/`` with one mask per image, paired by file stem (PraNet-style copies
and the Kvasir-SEG archive; Kvasir's masks are JPEGs, binarised ``> 0`` as in the papers' code).
CVC-ClinicDB's original archive (``Original/*.tif``, ``Ground Truth/*.tif``) is read as well. Endo
(EndoTect 2020 segmentation test set) may split its images over several folders sharing one
``masks/``. Every image shows a polyp: no normal images, so no image-level metrics.

Versions: smaller test subsets circulate (PraNet's ``TestDataset`` has 62 ClinicDB and 100 Kvasir
images); an index with exactly that many images is recorded as version ``pranet-test``, the full set
as ``official``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from datamodules.index import DatasetIndex, DatasetSpec, Parser, list_image_files, register_dataset
from datamodules.parsers.common import (
    IMAGE_EXTENSIONS,
    Findings,
    PairedSplit,
    make_records,
    pair_by_stem,
    parse_paired_folders,
    require_dir,
    subdirs,
)

POLYP_PROMPT = "colon"
POLYP_DEFECT = "polyp"
IMAGES_MASKS = PairedSplit("test", ("images",), ("masks",), hint="the folder should hold images/ and masks/")


def _with_subset_version(index: DatasetIndex, subsets: dict[int, str]) -> DatasetIndex:
    n = len(index.select(split="test").records)
    return dataclasses.replace(index, version=subsets.get(n, "official"))


def _paired(root: Path, name: str, splits: tuple[PairedSplit, ...], subsets: dict[int, str]) -> DatasetIndex:
    index = parse_paired_folders(root, name, name, POLYP_PROMPT, POLYP_DEFECT, splits)
    return _with_subset_version(index, subsets)


def parse_clinicdb(root: Path) -> DatasetIndex:
    layout = PairedSplit(
        "test",
        ("images", "Original"),
        ("masks", "Ground Truth", "GroundTruth"),
        hint="expected images/ + masks/ or the original archive's Original/ + Ground Truth/",
    )
    return _paired(root, "clinicdb", (layout,), {62: "pranet-test"})


def parse_colondb(root: Path) -> DatasetIndex:
    return _paired(root, "colondb", (IMAGES_MASKS,), {})


def parse_kvasir(root: Path) -> DatasetIndex:
    return _paired(root, "kvasir", (IMAGES_MASKS,), {100: "pranet-test"})


def parse_endo(root: Path) -> DatasetIndex:
    findings = Findings("endo", root)
    mask_dir = require_dir(
        root, "masks", dataset="endo", hint="EndoTect's segmentation test set ships a masks/ folder"
    )
    image_dirs = []
    for d in subdirs(root):
        if d == mask_dir:
            continue
        if list_image_files(d, IMAGE_EXTENSIONS):
            image_dirs.append(d)
        else:
            findings.warn(f"ignored folder {d}: no images in it")
    if not image_dirs:
        findings.error(f"no image folder next to {mask_dir}")
    pairs = pair_by_stem(image_dirs, mask_dir, findings)
    records = make_records(pairs, "endo", POLYP_PROMPT, 1, POLYP_DEFECT)
    return findings.finish(DatasetIndex(dataset="endo", root=root, records=records, has_masks=True))


def _spec(name: str, parse: Parser, n_test: int, description: str, **extra: Any) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        parse=parse,
        categories=(name,),
        has_masks=True,
        has_normals=False,
        domain="medical",
        expected_test_counts={name: (0, n_test)},
        description=description,
        **extra,
    )


register_dataset(
    _spec(
        "clinicdb",
        parse_clinicdb,
        612,
        "CVC-ClinicDB (Bernal et al., 2015), colonoscopy polyps; images/ + masks/ or Original/ + Ground Truth/",
        version_test_counts={"official": {"clinicdb": (0, 612)}, "pranet-test": {"clinicdb": (0, 62)}},
    )
)
register_dataset(
    _spec(
        "colondb",
        parse_colondb,
        380,
        "CVC-ColonDB (Bernal et al., 2012), colonoscopy polyps; images/ + masks/",
    )
)
register_dataset(
    _spec(
        "kvasir",
        parse_kvasir,
        1000,
        "Kvasir-SEG (Jha et al., 2020), polyps; images/ + masks/ (jpg)",
        version_test_counts={"official": {"kvasir": (0, 1000)}, "pranet-test": {"kvasir": (0, 100)}},
    )
)
register_dataset(
    _spec(
        "endo",
        parse_endo,
        200,
        "Endo: EndoTect 2020 segmentation test set, polyps; image folder(s) + masks/",
        counts_verified=False,
    )
)
