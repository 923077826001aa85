"""MVTec AD: the reference layout that MPDD, DTD, BTAD and converted SDD copies reuse."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index, get_dataset_spec
from datamodules.parsers.common import DatasetLayoutProblems


def test_index_counts_labels_and_pairing(fake_mvtec: Path) -> None:
    index = build_index("mvtec", fake_mvtec)
    assert index.categories() == ["bottle", "metal_nut"]
    assert index.version == "official" and index.has_masks
    test = index.select(split="test")
    assert test.counts() == {
        "bottle": {"normal": 2, "anomalous": 4},
        "metal_nut": {"normal": 2, "anomalous": 3},
    }
    assert len(index.select(split="train").records) == 4
    for r in index.records:
        if r.label:
            assert r.mask_path is not None and r.mask_path.name == f"{r.image_path.stem}_mask.png"
            assert r.mask_path.parent.name == r.defect_type == r.image_path.parent.name
        else:
            assert r.mask_path is None and r.defect_type == "good"
    assert index.prompt_names() == {"bottle": "bottle", "metal_nut": "metal nut"}
    caps = index.capabilities()
    assert caps["bottle"].image_metrics and caps["bottle"].pixel_metrics
    assert index.warnings == [] and index.problems == []


def test_batch_loads(fake_mvtec: Path, batch_of) -> None:
    batch = batch_of("mvtec", fake_mvtec)
    assert batch["has_mask"].all()


def test_spec() -> None:
    spec = get_dataset_spec("mvtec")
    assert len(spec.categories) == 15 and spec.has_masks and spec.has_normals
    assert spec.expected_total() == (467, 1258)


def test_missing_masks_are_all_reported(fake_mvtec: Path) -> None:
    (fake_mvtec / "bottle" / "ground_truth" / "contamination" / "000_mask.png").unlink()
    (fake_mvtec / "metal_nut" / "ground_truth" / "bent" / "001_mask.png").unlink()
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("mvtec", fake_mvtec)
    assert len(info.value.problems) == 2
    assert "no mask for anomalous image" in str(info.value) and "000_mask.png" in str(info.value)
    assert isinstance(info.value, DatasetLayoutError)


def test_stray_folders_warn_and_unpaired_masks_are_problems(fake_mvtec: Path, mask_writer) -> None:
    (fake_mvtec / "notes").mkdir()
    (fake_mvtec / "bottle" / "previews").mkdir()
    mask_writer(fake_mvtec / "bottle" / "ground_truth" / "broken_large" / "099_mask.png")
    index = build_index("mvtec", fake_mvtec)
    assert any("notes" in w and "not a mvtec category" in w for w in index.warnings)
    assert any("previews" in w for w in index.warnings)
    assert any("099_mask.png" in p for p in index.problems)


def test_missing_test_folder_and_wrong_root(fake_mvtec: Path, tmp_path: Path) -> None:
    shutil.rmtree(fake_mvtec / "bottle" / "test")
    with pytest.raises(DatasetLayoutError, match="missing folder .*bottle/test"):
        build_index("mvtec", fake_mvtec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="does not look like a mvtec root"):
        build_index("mvtec", tmp_path / "empty")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_index("mvtec", tmp_path / "nowhere")
