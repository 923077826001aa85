"""Real-IAD (Wang et al., CVPR 2024), 30 objects, each sample photographed from 5 camera views (C1-C5).

Layout of the official download (Tencent/AnomalyDetection_Real-IAD, README)::

    realiad_1024/{cls}/OK/S0001/{cls}_0001_OK_C1_{time}.jpg
    realiad_1024/{cls}/NG/{code}/S0057/{cls}_0057_NG_{code}_C1_{time}.jpg  (+ .png mask beside it)
    realiad_jsons/{cls}.json                    # multi-view split (the default)
    realiad_jsons_sv/{cls}.json                 # single view
    realiad_jsons_fuiad_{0.0,0.1,0.2,0.4}/{cls}.json

(``realiad_jsons.zip`` may also unpack with every JSON folder inside ``realiad_jsons/``; both are found.)
Each JSON holds ``meta`` (``prefix``, ``normal_class``) and the ``train``/``test`` lists of samples
``{category, anomaly_class, image_path, mask_path}``, paths relative to ``realiad_<res>/<prefix>``.

The split, the labels and the masks come from the JSON, never from the folders: a view of a defective
sample that does not show the defect is listed with ``anomaly_class`` OK (and no mask) although it lies in
an ``NG`` folder. As the official loader (``datasets/explicit_dataset.py``, ``load_explicit``), a test
sample is normal when its ``mask_path`` is null or its ``anomaly_class`` is the meta's ``normal_class``.

Each record's ``group`` is its physical sample, the key that Real-IAD's evaluation (ADEval, with the
README's ``--sample_key_pat``) captures from the file name: ``{cls}_{NNNN}_{OK|NG_code}`` before ``_C{view}_``.
The sample-level metrics score a sample by the maximum over its views (ADEval's ``max(score)``,
``max(label)``).

Options: ``version`` (``multi_view``, the default; ``single_view``; ``fuiad_0.0``, ``fuiad_0.1``,
``fuiad_0.2``, ``fuiad_0.4``) and ``resolution`` (``1024``, the default and the official code's; ``512``,
``256``, ``raw``: the folder ``realiad_<resolution>``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import NORMAL_DEFECT, DatasetIndex, DatasetSpec, SampleRecord, register_dataset
from datamodules.parsers.common import Findings, child_dir, warn_unexpected

REALIAD_CATEGORIES = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts", "pcb",
    "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator", "rolled_strip_base",
    "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy", "toy_brick", "transistor1",
    "u_block", "usb", "usb_adaptor", "vcpill", "wooden_beads", "woodstick", "zipper",
)  # fmt: skip
VERSIONS = {
    "multi_view": "realiad_jsons",
    "single_view": "realiad_jsons_sv",
    **{f"fuiad_{nr}": f"realiad_jsons_fuiad_{nr}" for nr in ("0.0", "0.1", "0.2", "0.4")},
}
RESOLUTIONS = ("1024", "512", "256", "raw")
#: ADEval's sample key (the README's ``--sample_key_pat``), searched in the image path.
SAMPLE_KEY = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_")
_SAMPLE_FIELDS = {"category", "anomaly_class", "image_path", "mask_path"}


def _prompt_name(category: str) -> str:
    return category.replace("_", " ")


def _json_dir(root: Path, folder: str) -> Path | None:
    for candidate in (root / folder, root / "realiad_jsons" / folder):
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


def _read(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f"realiad: cannot read {path}: {error}") from None
    if not isinstance(info, dict) or not all(k in info for k in ("meta", "train", "test")):
        raise DatasetLayoutError(
            f"realiad: {path} lacks the keys meta, train and test of Real-IAD's split files"
        )
    return info


def _records(
    path: Path, info: dict, image_dir: Path, category: str, findings: Findings
) -> list[SampleRecord]:
    meta = info["meta"]
    prefix, normal_class = meta.get("prefix", ""), meta.get("normal_class", "OK")
    base = image_dir / prefix if prefix else image_dir
    records = []
    for split in ("train", "test"):
        for i, sample in enumerate(info[split]):
            where = f"{path.name} {split}[{i}]"
            if not isinstance(sample, dict) or not set(sample) >= _SAMPLE_FIELDS:
                findings.error(f"{where}: a sample needs the fields {sorted(_SAMPLE_FIELDS)}")
                continue
            image = base / sample["image_path"]
            if not image.is_file():
                findings.error(f"{where}: image {image} does not exist")
                continue
            key = SAMPLE_KEY.search(image.name)
            if key is None:
                findings.error(
                    f"{where}: {image.name} has no Real-IAD sample key ({{cls}}_NNNN_OK|NG_code_C<view>_)"
                )
                continue
            normal = sample["mask_path"] is None or sample["anomaly_class"] == normal_class
            mask = None
            if not normal and split == "test":
                mask = base / sample["mask_path"]
                if not mask.is_file():
                    findings.error(f"{where}: mask {mask} of {image} does not exist")
                    continue
            records.append(
                SampleRecord(
                    category=category,
                    prompt_name=_prompt_name(category),
                    image_path=image,
                    mask_path=mask,
                    label=0 if normal or split == "train" else 1,
                    defect_type=NORMAL_DEFECT if normal else str(sample["anomaly_class"]),
                    split=split,
                    group=key.group(1),
                )
            )
    return records


def parse_realiad(root: Path, version: str = "multi_view", resolution: str = "1024") -> DatasetIndex:
    if version not in VERSIONS:
        raise DatasetLayoutError(f"realiad: option version must be one of {list(VERSIONS)}, got {version!r}")
    if str(resolution) not in RESOLUTIONS:
        raise DatasetLayoutError(
            f"realiad: option resolution must be one of {RESOLUTIONS}, got {resolution!r}"
        )
    image_dir = root / f"realiad_{resolution}"
    if not image_dir.is_dir():
        present = ", ".join(p.name for p in root.iterdir() if p.name.startswith("realiad_")) or "none"
        raise DatasetLayoutError(
            f"realiad: no image folder {image_dir} (found: {present}); unpack the images of that resolution "
            "there or choose another with --option resolution=... / data.options.resolution"
        )
    json_dir = _json_dir(root, VERSIONS[version])
    if json_dir is None:
        raise DatasetLayoutError(
            f"realiad: no split files for version {version} ({root / VERSIONS[version]}/*.json or "
            f"{root / 'realiad_jsons' / VERSIONS[version]}/*.json); unpack realiad_jsons.zip into {root}"
        )
    findings = Findings("realiad", root)
    records: list[SampleRecord] = []
    for category in REALIAD_CATEGORIES:
        path = json_dir / f"{category}.json"
        if not path.is_file():
            continue
        if child_dir(image_dir, category) is None:
            findings.error(f"no images for {category}: {image_dir / category} does not exist")
            continue
        records += _records(path, _read(path), image_dir, category, findings)
    for path in sorted(json_dir.glob("*.json")):
        if path.stem not in REALIAD_CATEGORIES:
            findings.warn(f"ignored split file {path}: not a Real-IAD category")
    warn_unexpected(findings, image_dir, REALIAD_CATEGORIES)
    index = DatasetIndex(dataset="realiad", root=root, records=records, has_masks=True, version=version)
    return findings.finish(index)


register_dataset(
    DatasetSpec(
        name="realiad",
        parse=parse_realiad,
        categories=REALIAD_CATEGORIES,
        has_masks=True,
        has_normals=True,
        domain="industrial",
        description="Real-IAD (Wang et al., CVPR 2024), 30 objects x 5 views; split and labels from the "
        "realiad_jsons files; sample-level metrics (max over views)",
    )
)
