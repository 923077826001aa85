"""ISIC 2016: test images and ``*_Segmentation.png`` masks in two folders; no normal images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_isic: Path) -> None:
    index = build_index("isic", fake_isic)
    assert index.select(split="test").counts() == {"isic": {"normal": 0, "anomalous": 3}}
    assert all(r.mask_path.name == f"{r.image_path.stem}_Segmentation.png" for r in index.records)
    caps = index.capabilities()["isic"]
    assert not caps.image_metrics and caps.pixel_metrics  # no normals: image metrics are skipped
    assert index.prompt_names() == {"isic": "skin"}


def test_batch_loads(fake_isic: Path, batch_of) -> None:
    batch_of("isic", fake_isic)


def test_missing_mask_and_folder(fake_isic: Path) -> None:
    (fake_isic / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000001_Segmentation.png").unlink()
    with pytest.raises(DatasetLayoutProblems, match="no mask for .*ISIC_0000001.jpg"):
        build_index("isic", fake_isic)
    shutil.rmtree(fake_isic / "ISBI2016_ISIC_Part1_Test_GroundTruth")
    with pytest.raises(DatasetLayoutError, match="expected folder .*ISBI2016_ISIC_Part1_Test_GroundTruth"):
        build_index("isic", fake_isic)
