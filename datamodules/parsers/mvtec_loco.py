"""MVTec LOCO AD (Bergmann et al., IJCV 2022), 5 objects with logical and structural anomalies.

Layout of the official archive (``mvtec_loco_anomaly_detection.tar.xz``; ``license.txt`` and ``readme.txt``
beside the object folders)::

    {cls}/train/good/*.png
    {cls}/validation/good/*.png
    {cls}/test/{good,logical_anomalies,structural_anomalies}/*.png
    {cls}/ground_truth/{logical_anomalies,structural_anomalies}/{stem}/000.png, 001.png, ...
    {cls}/defects_config.json

The mask of an anomalous image is a folder with one PNG per defect region, each holding the pixel value of
its defect type in ``defects_config.json`` (:mod:`datamodules.regions`): pixel metrics see their union,
the sPRO metric each region with its saturation rule.

Rows (option ``rows``): ``by_type`` (default) makes two categories per object, ``{cls}_logical`` and
``{cls}_structural``, each with all of the object's good test images, as MVTec's LOCO evaluation scores the
two anomaly types (``get_auc_spros_per_subdir(..., add_good_images=True)``, and the image AUROC per type);
``object`` makes one category per object with both types (``defect_type`` keeps the type). The two rows
of an object share its few-shot references (drawn as for ``object``) and its folder name in prompts
(``category_folders``): one object, split by type.
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
    warn_unexpected,
)
from datamodules.regions import DEFECTS_CONFIG, read_defects_config

MVTEC_LOCO_OBJECTS = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
ANOMALY_TYPES = {"logical_anomalies": "logical", "structural_anomalies": "structural"}
ROWS = ("by_type", "object")
MVTEC_LOCO_CATEGORIES = tuple(f"{o}_{t}" for o in MVTEC_LOCO_OBJECTS for t in ANOMALY_TYPES.values())


def _prompt_name(obj: str) -> str:
    return obj.replace("_", " ")


def parse_mvtec_loco(root: Path, rows: str = "by_type") -> DatasetIndex:
    if rows not in ROWS:
        raise DatasetLayoutError(f"mvtec_loco: option rows must be one of {ROWS}, got {rows!r}")
    present = [o for o in MVTEC_LOCO_OBJECTS if (root / o).is_dir()]
    if not present:
        raise DatasetLayoutError(
            f"mvtec_loco: {root} holds none of MVTec LOCO's object folders ({', '.join(MVTEC_LOCO_OBJECTS)})"
        )
    findings = Findings("mvtec_loco", root)
    warn_unexpected(findings, root, MVTEC_LOCO_OBJECTS)
    records, rules = [], {}
    for obj in present:
        obj_dir, name = root / obj, _prompt_name(obj)
        warn_unexpected(findings, obj_dir, ("train", "validation", "test", "ground_truth"))
        warn_unexpected(findings, obj_dir / "test", (NORMAL_DEFECT, *ANOMALY_TYPES))
        warn_unexpected(findings, obj_dir / "ground_truth", ANOMALY_TYPES)
        config = obj_dir / DEFECTS_CONFIG
        if not config.is_file():
            findings.error(f"missing {config} (the sPRO saturation rules of {obj})")
            object_rules = None
        else:
            object_rules = read_defects_config(config)
        if not (obj_dir / "test").is_dir():
            findings.error(f"missing folder {obj_dir / 'test'}")
            continue
        good = [(p, None) for p in list_image_files(obj_dir / "test" / NORMAL_DEFECT, IMAGE_EXTENSIONS)]
        train = [
            (p, None)
            for folder in ("train", "validation")
            for p in list_image_files(obj_dir / folder / NORMAL_DEFECT, IMAGE_EXTENSIONS)
        ]
        rows_of_object = [obj] if rows == "object" else [f"{obj}_{t}" for t in ANOMALY_TYPES.values()]
        for row in rows_of_object:
            records += make_records(train, row, name, 0, "", "train")
            records += make_records(good, row, name, 0, "", "test")
            for folder, kind in ANOMALY_TYPES.items():
                if rows == "by_type" and row != f"{obj}_{kind}":
                    continue
                pairs = pair_region_folders(
                    obj_dir / "test" / folder, obj_dir / "ground_truth" / folder, findings
                )
                records += make_records(pairs, row, name, 1, folder, "test")
            if object_rules is not None:
                rules[row] = object_rules
    # the two rows of an object are one folder: the same few-shot references, the object's name in prompts
    row_objects = (
        {f"{o}_{t}": o for o in present for t in ANOMALY_TYPES.values()} if rows == "by_type" else {}
    )
    index = DatasetIndex(
        dataset="mvtec_loco",
        root=root,
        records=records,
        has_masks=True,
        version=rows,
        region_rules=rules,
        row_objects=row_objects,
    )
    return findings.finish(index)


register_dataset(
    DatasetSpec(
        name="mvtec_loco",
        parse=parse_mvtec_loco,
        categories=MVTEC_LOCO_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        version_categories={"object": MVTEC_LOCO_OBJECTS},
        description="MVTec LOCO AD (Bergmann et al., IJCV 2022), 5 objects; a logical and a structural row "
        "each; masks are folders of region PNGs; sPRO beside AUPRO",
    )
)
