"""KolektorSDD2: an image is anomalous when its _GT.png has any non-zero pixel."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_ksdd2: Path) -> None:
    index = build_index("ksdd2", fake_ksdd2)
    assert index.categories() == ["ksdd2"]
    assert index.select(split="test").counts() == {"ksdd2": {"normal": 2, "anomalous": 2}}
    assert len(index.select(split="train").records) == 2
    for r in index.records:
        assert (r.mask_path is not None) == bool(r.label)
        if r.label:
            assert r.mask_path.name == f"{r.image_path.stem}_GT.png"
    assert index.warnings == [] and index.problems == []


def test_batch_loads(fake_ksdd2: Path, batch_of) -> None:
    batch_of("ksdd2", fake_ksdd2)  # masks of value 1 (not 255) are anomalous pixels


def test_missing_ground_truth_is_named(fake_ksdd2: Path) -> None:
    (fake_ksdd2 / "test" / "10001_GT.png").unlink()
    (fake_ksdd2 / "test" / "10009_GT.png").write_bytes((fake_ksdd2 / "test" / "10000_GT.png").read_bytes())
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("ksdd2", fake_ksdd2)
    assert info.value.problems == [
        f"no ground truth for {fake_ksdd2}/test/10001.png (expected {fake_ksdd2}/test/10001_GT.png)"
    ]
    (fake_ksdd2 / "test" / "10001.png").unlink()
    assert any("10009_GT.png has no image" in p for p in build_index("ksdd2", fake_ksdd2).problems)
