"""BMAD (Bao et al., 2024), the medical anomaly detection benchmark: six subsets from five modalities.

The public archives (BMAD's Google Drive: ``Brain_AD.zip``, ``Liver_AD.zip``, ``Retina_RESC_AD.zip``,
``Retina_OCT2017_AD.zip``, ``Chest-AD.zip``, ``Histopathology_AD.zip``) unpack into one folder per subset,
often with the original dataset's folder inside it (``Brain_AD/<wrapper>/train``...). Each subset is one
category, named by its folder without the ``_AD``/``-AD`` suffix; a subset whose ``train``/``test`` sit one
wrapper folder deeper is found there. Folder names are matched case-insensitively (``Test``, ``ungood``).

Only ``test/`` is evaluated: ``valid/`` (``val``, ``Val``) also holds anomalies and is BMAD's tuning split,
so it is left out; ``train/good`` is indexed as ``train``. Under ``test/``, ``good`` is normal and
``Ungood`` anomalous. The three pixel-level subsets (Brain, Liver, Retina_RESC) keep images in an ``img``
folder and masks in a ``label`` folder, paired by file stem, in either nesting the archives use:
``test/<good|Ungood>/<img|label>`` (Brain) or ``test/<img|label>/<good|Ungood>`` (Liver); RESC's own names
``test``/``test_label`` and BMAD's README's ``anomaly_mask`` are accepted too. The image-level subsets
(Retina_OCT2017, Chest, Histopathology) hold the images directly in ``test/<good|Ungood>``; they have no
masks, so no pixel metrics.
"""

from __future__ import annotations

import re
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import NORMAL_DEFECT, DatasetIndex, DatasetSpec, list_image_files, register_dataset
from datamodules.parsers.common import (
    IMAGE_EXTENSIONS,
    Findings,
    child_dir,
    make_records,
    pair_by_stem,
    subdirs,
    warn_unexpected,
)

BMAD_CATEGORIES = ("Brain", "Liver", "Retina_RESC", "Retina_OCT2017", "Chest", "Histopathology")
PIXEL_LEVEL = frozenset({"Brain", "Liver", "Retina_RESC"})
BMAD_PROMPTS = {
    "Brain": "brain", "Liver": "liver", "Retina_RESC": "retina", "Retina_OCT2017": "retina",
    "Chest": "chest", "Histopathology": "histopathology",
}  # fmt: skip
ANOMALOUS = "Ungood"
IMAGE_FOLDERS = ("img", "test")
MASK_FOLDERS = ("label", "anomaly_mask", "test_label")
_SUFFIX = re.compile(r"[_-]AD$", re.IGNORECASE)
_KNOWN = ("train", "test", "valid", "val")


def category_of(folder: Path) -> str | None:
    """The BMAD category a subset folder stands for (``Chest-AD`` -> ``Chest``), None for other folders."""
    name = _SUFFIX.sub("", folder.name)
    return next((c for c in BMAD_CATEGORIES if c.casefold() == name.casefold()), None)


def _subset_root(folder: Path) -> Path | None:
    """The folder holding ``test/``: the subset folder itself or the one wrapper folder inside it."""
    if child_dir(folder, "test") is not None:
        return folder
    inner = subdirs(folder)
    if len(inner) == 1 and child_dir(inner[0], "test") is not None:
        return inner[0]
    return None


def _test_pairs(test: Path, label: str, masks: bool, findings: Findings) -> list[tuple[Path, Path | None]]:
    """Images (and masks) of one label folder of ``test/``, in either nesting."""
    inner = child_dir(test, label)
    if not masks:
        return [(p, None) for p in list_image_files(inner, IMAGE_EXTENSIONS)] if inner else []
    if inner is not None and child_dir(inner, *IMAGE_FOLDERS) is not None:  # test/<label>/<img|label>
        image_dir, mask_dir = child_dir(inner, *IMAGE_FOLDERS), child_dir(inner, *MASK_FOLDERS)
    else:  # test/<img|label>/<label>
        outer_images, outer_masks = child_dir(test, *IMAGE_FOLDERS), child_dir(test, *MASK_FOLDERS)
        image_dir = child_dir(outer_images, label) if outer_images else None
        mask_dir = child_dir(outer_masks, label) if outer_masks else None
    if image_dir is None:
        return []
    if label == NORMAL_DEFECT:
        return [(p, None) for p in list_image_files(image_dir, IMAGE_EXTENSIONS)]
    if mask_dir is None:
        findings.error(
            f"no mask folder for {image_dir} (expected a sibling named one of {', '.join(MASK_FOLDERS)})"
        )
    return pair_by_stem(image_dir, mask_dir, findings)


def parse_bmad(root: Path) -> DatasetIndex:
    findings = Findings("bmad", root)
    subsets: dict[str, Path] = {}
    for folder in subdirs(root):
        category = category_of(folder)
        if category is None:
            findings.warn(
                f"ignored folder {folder}: not a BMAD subset ({', '.join(BMAD_CATEGORIES)}, _AD optional)"
            )
            continue
        subset = _subset_root(folder)
        if subset is None:
            findings.error(f"no test/ folder in {folder} or in a single wrapper folder inside it")
            continue
        subsets[category] = subset
    if not subsets and not findings.errors:
        raise DatasetLayoutError(
            f"bmad: {root} holds no BMAD subset folder (Brain_AD, Liver_AD, Retina_RESC_AD, Retina_OCT2017_AD, "
            "Chest-AD, Histopathology_AD); point the root at the folder the archives were unpacked into"
        )
    records = []
    for category in (c for c in BMAD_CATEGORIES if c in subsets):
        subset, prompt, masks = subsets[category], BMAD_PROMPTS[category], category in PIXEL_LEVEL
        warn_unexpected(findings, subset, _KNOWN)
        train = child_dir(subset, "train")
        if train is not None:
            good = child_dir(train, NORMAL_DEFECT)
            image_dir = child_dir(good, *IMAGE_FOLDERS) if good is not None else None
            images = list_image_files(image_dir or good, IMAGE_EXTENSIONS) if good is not None else []
            records += make_records(((p, None) for p in images), category, prompt, 0, "", "train")
        test = child_dir(subset, "test")
        normal = _test_pairs(test, NORMAL_DEFECT, masks, findings)
        anomalous = _test_pairs(test, ANOMALOUS, masks, findings)
        if not normal or not anomalous:
            findings.error(
                f"{test} needs images in both {NORMAL_DEFECT}/ and {ANOMALOUS}/ (case-insensitive)"
            )
        records += make_records(normal, category, prompt, 0, "", "test")
        records += make_records(anomalous, category, prompt, 1, ANOMALOUS, "test")
    index = DatasetIndex(
        dataset="bmad",
        root=root,
        records=records,
        has_masks=True,
        mask_free_categories=frozenset(c for c in subsets if c not in PIXEL_LEVEL),
    )
    return findings.finish(index)


register_dataset(
    DatasetSpec(
        name="bmad",
        parse=parse_bmad,
        categories=BMAD_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="medical",
        description="BMAD (Bao et al.), 6 medical subsets; test/ evaluated; masks for Brain, Liver, "
        "Retina_RESC only",
    )
)
