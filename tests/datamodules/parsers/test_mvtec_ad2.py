"""MVTec AD 2: test_public evaluated; train/ and validation/ normal training images; the private test sets
are not indexed, only counted against MVTec's upload checker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.index import build_index
from datamodules.parsers import mvtec_ad2
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_mvtec_ad2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mvtec_ad2, "PRIVATE_COUNTS", dict.fromkeys(mvtec_ad2.PRIVATE_COUNTS, 2))
    index = build_index("mvtec_ad2", fake_mvtec_ad2)
    assert index.categories() == ["can", "walnuts"]
    assert index.select(split="test").counts() == {
        "can": {"normal": 2, "anomalous": 2},
        "walnuts": {"normal": 2, "anomalous": 2},
    }
    train = index.select(split="train").records
    assert len(train) == 4 and {r.image_path.parent.parent.name for r in train} == {"train", "validation"}
    assert not any("private" in str(r.image_path) for r in index.records)
    for r in index.select(split="test").records:
        if r.label:
            assert r.mask_path.name == f"{r.image_path.stem}_mask.png" and r.defect_type == "bad"
    assert index.warnings == [] and index.problems == []  # license.txt is ignored


def test_private_counts_are_checked(fake_mvtec_ad2: Path) -> None:
    problems = build_index("mvtec_ad2", fake_mvtec_ad2).problems
    assert any("can/test_private holds 2 images, MVTec's upload checker expects 321" in p for p in problems)
    assert len(problems) == 4


def test_batch_loads(fake_mvtec_ad2: Path, batch_of) -> None:
    batch_of("mvtec_ad2", fake_mvtec_ad2)


def test_missing_mask_and_unknown_folder(fake_mvtec_ad2: Path) -> None:
    (fake_mvtec_ad2 / "can" / "test_public" / "ground_truth" / "bad" / "001_overexposed_mask.png").unlink()
    (fake_mvtec_ad2 / "can" / "previews").mkdir()
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("mvtec_ad2", fake_mvtec_ad2)
    assert info.value.problems == [
        f"no mask for {fake_mvtec_ad2}/can/test_public/bad/001_overexposed.png "
        f"(expected {fake_mvtec_ad2}/can/test_public/ground_truth/bad/001_overexposed_mask.png)"
    ]
    (fake_mvtec_ad2 / "can" / "test_public" / "bad" / "001_overexposed.png").unlink()
    index = build_index("mvtec_ad2", fake_mvtec_ad2)
    assert any("ignored folder" in w and "previews" in w for w in index.warnings)
    shutil.rmtree(fake_mvtec_ad2 / "walnuts" / "test_public")
    with pytest.raises(DatasetLayoutProblems, match="missing folder .*walnuts/test_public"):
        build_index("mvtec_ad2", fake_mvtec_ad2)
