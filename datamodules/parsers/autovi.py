"""AutoVI (Carvalho et al., 2024), Renault's automotive production-line images, 6 categories.

Layout of the Zenodo archives (one per category, https://doi.org/10.5281/zenodo.10459003; a category may
unpack inside a wrapper folder of its own name, ``engine_wiring/engine_wiring/``, which is found)::

    {cls}/train/good/*.png
    {cls}/test/{good,<defect>}/*.png
    {cls}/ground_truth/<defect>/{stem}/0000.png, ...     # one PNG per defect region
    {cls}/defects_config.json

As in MVTec LOCO AD, whose evaluation code AutoVI's adapts, the mask of an anomalous image is a folder of
region PNGs (their union for the pixel metrics) with saturation rules in ``defects_config.json`` for sPRO
(:mod:`datamodules.regions`); a category without the config has no sPRO. One category row per object;
every test folder but ``good`` is anomalous.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import NORMAL_DEFECT, DatasetIndex, DatasetSpec, list_image_files, register_dataset
from datamodules.parsers.common import (
    IMAGE_EXTENSIONS,
    Findings,
    make_records,
    pair_region_folders,
    subdirs,
    warn_unexpected,
)
from datamodules.regions import DEFECTS_CONFIG, read_defects_config

AUTOVI_CATEGORIES = (
    "engine_wiring", "pipe_clip", "pipe_staple", "tank_screw", "underbody_pipes", "underbody_screw",
)  # fmt: skip


def _prompt_name(category: str) -> str:
    return category.replace("_", " ")


def _category_dir(root: Path, category: str) -> Path | None:
    for candidate in (root / category / category, root / category):
        if (candidate / "test").is_dir():
            return candidate
    return None


def parse_autovi(root: Path) -> DatasetIndex:
    findings = Findings("autovi", root)
    warn_unexpected(findings, root, AUTOVI_CATEGORIES)
    records, rules = [], {}
    for category in AUTOVI_CATEGORIES:
        if not (root / category).is_dir():
            continue
        cat_dir = _category_dir(root, category)
        if cat_dir is None:
            findings.error(f"missing folder {root / category / 'test'}")
            continue
        name = _prompt_name(category)
        warn_unexpected(findings, cat_dir, ("train", "test", "ground_truth"))
        if (cat_dir / DEFECTS_CONFIG).is_file():
            rules[category] = read_defects_config(cat_dir / DEFECTS_CONFIG)
        else:
            findings.warn(f"no {cat_dir / DEFECTS_CONFIG}: no sPRO for {category}")
        train = list_image_files(cat_dir / "train" / NORMAL_DEFECT, IMAGE_EXTENSIONS)
        records += make_records(((p, None) for p in train), category, name, 0, "", "train")
        defects = set()
        for defect_dir in subdirs(cat_dir / "test"):
            if defect_dir.name == NORMAL_DEFECT:
                images = list_image_files(defect_dir, IMAGE_EXTENSIONS)
                records += make_records(((p, None) for p in images), category, name, 0, "", "test")
                continue
            defects.add(defect_dir.name)
            pairs = pair_region_folders(defect_dir, cat_dir / "ground_truth" / defect_dir.name, findings)
            records += make_records(pairs, category, name, 1, defect_dir.name, "test")
        for gt_dir in subdirs(cat_dir / "ground_truth"):
            if gt_dir.name not in defects:
                findings.problem(f"mask folder {gt_dir} has no test folder {cat_dir / 'test' / gt_dir.name}")
    if not records and not findings.errors:
        raise DatasetLayoutError(
            f"autovi: {root} holds none of AutoVI's category folders ({', '.join(AUTOVI_CATEGORIES)})"
        )
    index = DatasetIndex(dataset="autovi", root=root, records=records, has_masks=True, region_rules=rules)
    return findings.finish(index)


register_dataset(
    DatasetSpec(
        name="autovi",
        parse=parse_autovi,
        categories=AUTOVI_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        description="AutoVI (Carvalho et al., 2024), Renault, 6 categories; masks are folders of region PNGs; "
        "sPRO beside AUPRO",
    )
)
