"""COVID-19 Radiography: class folders chosen by option, matched case-insensitively; lung masks ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError, ZsadError
from datamodules.index import build_index, get_dataset_spec


def test_default_is_anomalyclip_every_class_but_normal_anomalous(fake_covid: Path, batch_of) -> None:
    index = build_index("covid", fake_covid)
    assert index.version == "anomalyclip" and not index.has_masks
    assert index.select(split="test").counts() == {"covid": {"normal": 3, "anomalous": 4}}
    assert {r.defect_type for r in index.records if r.label} == {"COVID", "Lung_Opacity", "Viral Pneumonia"}
    assert all(r.image_path.parent.name == "images" and r.mask_path is None for r in index.records)
    assert not index.warnings  # the metadata .xlsx files are not folders
    assert get_dataset_spec("covid").expected_counts(index.version) == {"covid": (10192, 10973)}
    batch = batch_of("covid", fake_covid)
    assert batch["mask"].sum() == 0


def test_kaggle_normal_vs_covid_is_an_option(fake_covid: Path) -> None:
    index = build_index("covid", fake_covid, anomalous="covid")
    assert index.version == "normal=Normal;anomalous=COVID"
    assert index.select(split="test").counts() == {"covid": {"normal": 3, "anomalous": 2}}
    assert sum("ignored folder" in w for w in index.warnings) == 2  # Lung_Opacity, Viral Pneumonia
    assert get_dataset_spec("covid").expected_counts(index.version) == {"covid": (10192, 3616)}


def test_folder_choice_option(fake_covid: Path, batch_of) -> None:
    index = build_index("covid", fake_covid, anomalous="COVID,Viral Pneumonia, lung_opacity")
    assert index.select(split="test").counts() == {"covid": {"normal": 3, "anomalous": 4}}
    assert index.version == "normal=Normal;anomalous=COVID+Viral Pneumonia+Lung_Opacity"  # names as on disk
    assert get_dataset_spec("covid").expected_counts(index.version) is None
    batch_of("covid", fake_covid, anomalous="COVID,Viral Pneumonia")


def test_2020_release_layout_is_recorded_and_has_no_expected_counts(fake_covid: Path) -> None:
    """The layout AnomalyCLIP's generator reads: images directly in the class folders, ``NORMAL``."""
    (fake_covid / "Normal").rename(fake_covid / "NORMAL")
    for folder in ("NORMAL", "COVID", "Lung_Opacity", "Viral Pneumonia"):
        for p in (fake_covid / folder / "images").iterdir():
            p.rename(fake_covid / folder / p.name)
        (fake_covid / folder / "images").rmdir()
    (fake_covid / "Lung_Opacity").rename(fake_covid / "COVID-19")
    index = build_index("covid", fake_covid)
    # the generator's rule: every top-level folder but NORMAL is anomalous
    assert index.select(split="test").counts()["covid"] == {"normal": 3, "anomalous": 4}
    assert {r.defect_type for r in index.records if r.label} == {"COVID", "COVID-19", "Viral Pneumonia"}
    assert index.version == "anomalyclip;release=2020"
    spec = get_dataset_spec("covid")
    assert spec.expected_counts(index.version) is None  # not the current release's 10192 / 10973
    other = build_index("covid", fake_covid, anomalous="COVID")
    assert other.version == "normal=Normal;anomalous=COVID;release=2020"  # spelling canonical
    assert spec.expected_counts(other.version) is None


def test_bad_options(fake_covid: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no folder 'Pneumonia'"):
        build_index("covid", fake_covid, anomalous="Pneumonia")
    with pytest.raises(DatasetLayoutError, match="both normal and anomalous"):
        build_index("covid", fake_covid, normal="Normal,COVID", anomalous="covid")
    with pytest.raises(ZsadError, match="no option"):
        build_index("covid", fake_covid, abnormal="COVID")
    with pytest.raises(ZsadError, match="takes no options"):
        build_index("br35h", fake_covid, anomalous="COVID")
