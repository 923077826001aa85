"""DAGM (Kaggle upload): capitalised Train/Test and Label folders, .PNG; anomalous iff a label exists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems
from datamodules.parsers.dagm import ADACLIP_TEST_COUNTS, DAGM_TEST_COUNTS


def test_index(fake_dagm: Path) -> None:
    index = build_index("dagm", fake_dagm)
    assert index.categories() == ["Class1", "Class2", "Class10"]  # numeric order
    assert index.version == "official"
    for split in ("test", "train"):
        counts = index.select(split=split).counts()
        assert all(c == {"normal": 2, "anomalous": 2} for c in counts.values())
    for r in index.records:
        if r.label:
            assert r.mask_path == r.image_path.parent / "Label" / f"{r.image_path.stem}_label.PNG"
        else:
            assert r.mask_path is None
    assert set(index.prompt_names().values()) == {"texture"}
    assert index.warnings == [] and index.problems == []  # Label/ and Labels.txt are expected


def test_adaclip_balanced_pools_defects_and_as_many_normals_of_both_folders(fake_dagm: Path) -> None:
    index = build_index("dagm", fake_dagm, version="adaclip-balanced")
    assert index.version == "adaclip-balanced"
    test = index.select(split="test")
    # per folder 2 defects (0002, 0004) and the first 2 normals by name (0001, 0003); train keeps none
    assert all(c == {"normal": 4, "anomalous": 4} for c in test.counts().values())
    assert not index.select(split="train").records
    normals = sorted(r.image_path.relative_to(fake_dagm).as_posix() for r in test.records if not r.label)
    assert normals[:4] == [
        "Class1/Test/0001.PNG",
        "Class1/Test/0003.PNG",
        "Class1/Train/0001.PNG",
        "Class1/Train/0003.PNG",
    ]
    with pytest.raises(DatasetLayoutError, match="version must be one of"):
        build_index("dagm", fake_dagm, version="balanced")


def test_batch_loads(fake_dagm: Path, batch_of) -> None:
    batch_of("dagm", fake_dagm)


def test_expected_counts_are_the_test_folders_of_nvidias_defect_counts() -> None:
    # NVIDIA's DeepLearningExamples (UNet_Industrial/preprocess_dagm2007.py) expects these defective images
    # per class in the Test folders; DAGM's folders hold 575 (classes 1-6) / 1150 (classes 7-10) images.
    test_defective = [71, 84, 84, 68, 80, 67, 150, 150, 150, 150]
    assert [DAGM_TEST_COUNTS[f"Class{i}"] for i in range(1, 11)] == [
        ((575 if i <= 6 else 1150) - d, d) for i, d in enumerate(test_defective, start=1)
    ]
    assert sum(n for n, _ in DAGM_TEST_COUNTS.values()) == 6996
    assert sum(a for _, a in DAGM_TEST_COUNTS.values()) == 1054
    # both folders' defects (150 / 300 per class, DAGM's description) and as many normals
    assert {
        c: (150, 150) if i <= 6 else (300, 300) for i, c in enumerate(DAGM_TEST_COUNTS, 1)
    } == ADACLIP_TEST_COUNTS


def test_adaclip_balanced_takes_as_many_normals_as_defects_per_folder(
    tmp_path: Path, image_writer, mask_writer
) -> None:
    """Unequal defects per folder, as in DAGM (Class1: 71 in Test, 79 in Train): the normals follow each
    folder's own count, as AdaCLIP's ``dagm-pre.py`` slices ``normal_image_path[:length]`` per folder."""
    root = tmp_path / "DAGM_KaggleUpload"
    for folder, defective in (("Test", (3,)), ("Train", (1, 5, 6))):
        split_dir = root / "Class1" / folder
        offset = 0 if folder == "Test" else 10  # names unique across both folders
        for i in range(1, 8):
            image_writer(split_dir / f"{offset + i:04d}.PNG", mode="L", seed=i)
        for i in defective:
            mask_writer(split_dir / "Label" / f"{offset + i:04d}_label.PNG")
    index = build_index("dagm", root, version="adaclip-balanced")
    test = index.select(split="test")
    names = sorted(r.image_path.relative_to(root).as_posix() for r in test.records if not r.label)
    assert names == [
        "Class1/Test/0001.PNG",
        "Class1/Train/0012.PNG",
        "Class1/Train/0013.PNG",
        "Class1/Train/0014.PNG",
    ]
    assert test.counts() == {"Class1": {"normal": 4, "anomalous": 4}}
    assert len(index.select(split="train").records) == (7 - 1 - 1) + (7 - 3 - 3)
    official = build_index("dagm", root)
    assert official.select(split="test").counts() == {"Class1": {"normal": 6, "anomalous": 1}}


def test_converted_copy_is_mvtec_like(tmp_path: Path, mvtec_like_writer) -> None:
    root = tmp_path / "DAGM_anomaly_detection"
    mvtec_like_writer(root, "Class1", defects=("defect",))
    index = build_index("dagm", root)
    assert index.version == "mvtec-like" and index.categories() == ["Class1"]


def test_broken_layouts(fake_dagm: Path) -> None:
    (fake_dagm / "unpacked_twice").mkdir()
    (fake_dagm / "Class2" / "Test" / "Label" / "0009_label.PNG").write_bytes(b"")
    index = build_index("dagm", fake_dagm)
    assert any("unpacked_twice" in w for w in index.warnings)
    assert any("0009_label.PNG has no image" in p for p in index.problems)
    shutil.rmtree(fake_dagm / "Class10" / "Test")
    with pytest.raises(DatasetLayoutProblems, match="missing folder .*Class10/Test"):
        build_index("dagm", fake_dagm)
