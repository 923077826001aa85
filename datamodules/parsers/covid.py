"""COVID-19 Radiography Database (Kaggle), chest X-rays with image-level labels only.

Layout: ``{COVID,Normal,Lung_Opacity,Viral Pneumonia}/images/*.png``; the ``masks/`` next to
``images/`` are lung masks, not lesions, and are ignored. Older releases put the images directly in
the class folder and spell it ``NORMAL``; folders are matched case-insensitively.

Which folders are normal and which anomalous is a choice: by default Normal vs COVID (10192 / 3616).
Choose others with the parser options ``normal`` and ``anomalous`` (comma-separated folder names),
e.g. in a data config ``options: {anomalous: "COVID,Viral Pneumonia"}`` (or the override
``targets.0.options.anomalous=COVID,Lung_Opacity`` / ``source.options...``), on the command line
``zsad data check covid --root ... --option anomalous=COVID,Lung_Opacity``, or in Python
``build_index("covid", root, anomalous="COVID,Lung_Opacity")``. A non-default choice is recorded in
``DatasetIndex.version`` and has no expected counts. No masks: no pixel-level metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.common import Findings, child_dir, folder_records, subdirs
from pipelines.errors import DatasetLayoutError

COVID_CATEGORY = "covid"
COVID_PROMPT = "chest"
DEFAULT_NORMAL = ("Normal",)
DEFAULT_ANOMALOUS = ("COVID",)


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())


def _image_folder(class_dir: Path) -> Path:
    images = child_dir(class_dir, "images")
    return images if images is not None else class_dir


def parse_covid(
    root: Path,
    normal: str | Sequence[str] = DEFAULT_NORMAL,
    anomalous: str | Sequence[str] = DEFAULT_ANOMALOUS,
) -> DatasetIndex:
    normal_names, anomalous_names = _names(normal), _names(anomalous)
    if not normal_names or not anomalous_names:
        raise DatasetLayoutError("covid: options 'normal' and 'anomalous' each need at least one folder name")
    overlap = {n.casefold() for n in normal_names} & {n.casefold() for n in anomalous_names}
    if overlap:
        raise DatasetLayoutError(f"covid: folders {sorted(overlap)} are listed as both normal and anomalous")
    findings = Findings("covid", root)
    present = ", ".join(p.name for p in subdirs(root)) or "none"
    records = []
    used: set[Path] = set()
    found: dict[int, list[str]] = {0: [], 1: []}  # folder names as on disk, for the version string
    for names, label in ((normal_names, 0), (anomalous_names, 1)):
        for name in names:
            class_dir = child_dir(root, name)
            if class_dir is None:
                raise DatasetLayoutError(
                    f"covid: no folder '{name}' under {root} (folders present: {present}); "
                    "point the dataset root (source.root / targets.N.root; --root for zsad data check) at COVID-19_Radiography_Dataset or fix the normal/anomalous options"
                )
            used.add(class_dir)
            found[label].append(class_dir.name)
            records += folder_records(
                _image_folder(class_dir), COVID_CATEGORY, COVID_PROMPT, label, class_dir.name
            )
    for p in subdirs(root):
        if p not in used:
            findings.warn(
                f"ignored folder {p}: not selected as normal ({', '.join(normal_names)}) "
                f"or anomalous ({', '.join(anomalous_names)})"
            )
    default = [n.casefold() for n in found[0]] == ["normal"] and [n.casefold() for n in found[1]] == ["covid"]
    version = "official" if default else f"normal={'+'.join(found[0])};anomalous={'+'.join(found[1])}"
    index = DatasetIndex(dataset="covid", root=root, records=records, has_masks=False, version=version)
    return findings.finish(index)


register_dataset(
    DatasetSpec(
        name="covid",
        parse=parse_covid,
        categories=(COVID_CATEGORY,),
        has_masks=False,
        has_normals=True,
        domain="medical",
        expected_test_counts={COVID_CATEGORY: (10192, 3616)},
        description="COVID-19 Radiography Database (Kaggle), chest X-rays; Normal vs COVID by default; no masks",
    )
)
