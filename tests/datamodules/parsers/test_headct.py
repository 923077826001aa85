"""HeadCT: labels.csv (``id, hemorrhage``) with integer ids for zero-padded file names; no masks."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_headct: Path, batch_of) -> None:
    index = build_index("headct", fake_headct)
    assert not index.has_masks
    assert index.select(split="test").counts() == {"headct": {"normal": 2, "anomalous": 2}}
    labels = {r.image_path.name: r.label for r in index.records}
    assert labels == {"000.png": 1, "001.png": 1, "002.png": 0, "003.png": 0}
    assert all(r.mask_path is None for r in index.records)
    caps = index.capabilities()["headct"]
    assert caps.image_metrics and not caps.pixel_metrics  # no masks: pixel metrics are skipped
    batch = batch_of("headct", fake_headct)
    assert not batch["has_mask"].any()


def test_zero_padded_ids_in_csv(fake_headct: Path) -> None:
    (fake_headct / "labels.csv").write_text("id,hemorrhage\n000,1\n001,0\n002,0\n003,1\n")
    assert [r.label for r in build_index("headct", fake_headct).records].count(1) == 2


def test_broken(fake_headct: Path) -> None:
    (fake_headct / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n7,1\n")
    with pytest.raises(DatasetLayoutProblems, match="lists id 7 but .* has no image 007.png"):
        build_index("headct", fake_headct)
    (fake_headct / "labels.csv").unlink()
    with pytest.raises(DatasetLayoutError, match=r"labels.csv not found"):
        build_index("headct", fake_headct)
