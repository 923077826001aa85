"""COVID-19 Radiography Database (Kaggle), chest X-rays with image-level labels only.

Layout of the current release (the 2021 update): ``{COVID,Normal,Lung_Opacity,Viral Pneumonia}/images/*.png``;
the ``masks/`` next to ``images/`` are lung masks, not lesions, and are ignored. The 2020 releases put the
images directly in the class folders and spell ``NORMAL``; folders are matched case-insensitively.

Which folders are normal and which anomalous is a choice. The default is AnomalyCLIP's generator
(``generate_dataset_json/covid.py``): every top-level class folder except ``NORMAL`` is anomalous; version
``anomalyclip``. That generator lists the images directly in the class folders, so it was written for a
2020 release; on one of those the version is ``anomalyclip;release=2020`` (no expected counts: the 2020
releases differ, and which one AnomalyCLIP read is not published in its code). On the current release the
rule gives COVID, Lung_Opacity and Viral Pneumonia against Normal, 10192 / 10973 (the release notes'
counts). Choose others with the parser options ``normal`` and ``anomalous`` (comma-separated folder names;
``anomalous=all`` is the default), e.g. Kaggle's Normal vs COVID (10192 / 3616, version
``normal=Normal;anomalous=COVID``) with ``options: {anomalous: COVID}`` in a data config (or the override
``targets.0.options.anomalous=COVID`` / ``source.options...``), on the command line ``zsad data check
covid --root ... --option anomalous=COVID``, or in Python ``build_index("covid", root, anomalous="COVID")``.
Any other choice is recorded in ``DatasetIndex.version`` and has no expected counts. No masks: no
pixel-level metrics. See docs/datasets.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import DatasetIndex, DatasetSpec, register_dataset
from datamodules.parsers.common import Findings, child_dir, folder_records, subdirs

COVID_CATEGORY = "covid"
COVID_PROMPT = "chest"
DEFAULT_NORMAL = ("Normal",)
ALL_OTHERS = "all"  # every class folder that is not normal (AnomalyCLIP's generator)
ANOMALYCLIP_VERSION = "anomalyclip"
NORMAL_VS_COVID = "normal=Normal;anomalous=COVID"
# Appended to the version of a 2020 release (images directly in the class folders, no ``images/``).
RELEASE_2020 = ";release=2020"


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())


def _image_folder(class_dir: Path) -> Path:
    images = child_dir(class_dir, "images")
    return images if images is not None else class_dir


def parse_covid(
    root: Path,
    normal: str | Sequence[str] = DEFAULT_NORMAL,
    anomalous: str | Sequence[str] = ALL_OTHERS,
) -> DatasetIndex:
    normal_names, anomalous_names = _names(normal), _names(anomalous)
    every_other = [n.casefold() for n in anomalous_names] == [ALL_OTHERS]
    if every_other:
        normal_dirs = {d for d in (child_dir(root, n) for n in normal_names) if d is not None}
        anomalous_names = tuple(p.name for p in subdirs(root) if p not in normal_dirs)
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
    anomalyclip = every_other and [n.casefold() for n in found[0]] == ["normal"]
    version = (
        ANOMALYCLIP_VERSION if anomalyclip else f"normal={'+'.join(found[0])};anomalous={'+'.join(found[1])}"
    )
    if version.casefold() == NORMAL_VS_COVID.casefold():
        version = NORMAL_VS_COVID
    if not any(child_dir(d, "images") is not None for d in used):
        version += RELEASE_2020  # other counts than the current release's, none of them known here
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
        # the current Kaggle release, as its release notes count it (Normal 10192, COVID 3616, Lung_Opacity
        # 6012, Viral Pneumonia 1345); the 2020 releases (";release=2020") have no expected counts
        expected_test_counts={COVID_CATEGORY: (10192, 10973)},
        version_test_counts={
            ANOMALYCLIP_VERSION: {COVID_CATEGORY: (10192, 10973)},
            NORMAL_VS_COVID: {COVID_CATEGORY: (10192, 3616)},
        },
        # The release notes' counts, not checked on a copy here; AnomalyCLIP's table is of a 2020 release.
        counts_verified=False,
        description="COVID-19 Radiography Database (Kaggle), chest X-rays; Normal vs every other class "
        "(AnomalyCLIP's generator) by default; no masks",
    )
)
