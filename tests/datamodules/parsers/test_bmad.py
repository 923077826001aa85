"""BMAD: subsets named without _AD/-AD, found inside a wrapper folder, test/ only, both img/label nestings,
Ungood case-insensitive, pixel metrics only where the subset has masks."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_bmad: Path) -> None:
    index = build_index("bmad", fake_bmad)
    assert index.categories() == ["Brain", "Liver", "Chest"]
    assert index.select(split="test").counts() == {
        "Brain": {"normal": 2, "anomalous": 2},
        "Liver": {"normal": 2, "anomalous": 2},  # lower-case ungood, test/<img|label>/<label>
        "Chest": {"normal": 3, "anomalous": 3},
    }
    assert not any("valid" in r.image_path.parts or "val" in r.image_path.parts for r in index.records)
    assert len(index.select(split="train").records) == 3
    for r in index.select(split="test").records:
        assert (r.mask_path is not None) == (bool(r.label) and r.category != "Chest")
        if r.mask_path is not None:
            assert r.mask_path.name == r.image_path.name and "label" in r.mask_path.parts
    caps = index.capabilities()
    assert caps["Brain"].pixel_metrics and not caps["Chest"].pixel_metrics and caps["Chest"].image_metrics
    assert index.prompt_names() == {"Brain": "brain", "Liver": "liver", "Chest": "chest"}
    assert index.warnings == [] and index.problems == []  # .DS_Store and README.md are files


def test_batch_loads(fake_bmad: Path, batch_of) -> None:
    batch = batch_of("bmad", fake_bmad)
    chest = batch["category_id"] == 2
    assert not batch["has_mask"][chest].any() and batch["has_mask"][~chest].all()


def test_missing_mask_and_unknown_folder(fake_bmad: Path) -> None:
    (fake_bmad / "Brain_AD" / "BraTS2021_slice" / "test" / "Ungood" / "label" / "00001_91.png").unlink()
    (fake_bmad / "Knee_AD").mkdir()
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("bmad", fake_bmad)
    assert len(info.value.problems) == 1 and "no mask for" in info.value.problems[0]
    assert "Ungood/img/00001_91.png" in info.value.problems[0]
    (fake_bmad / "Brain_AD" / "BraTS2021_slice" / "test" / "Ungood" / "img" / "00001_91.png").unlink()
    index = build_index("bmad", fake_bmad)
    assert any("ignored folder" in w and "Knee_AD" in w for w in index.warnings)
