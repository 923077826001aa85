"""TN3K: test-image/ + test-mask/ (grey JPEGs, loaded as RGB); trainval indexed as train."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index


def test_index(fake_tn3k: Path, batch_of) -> None:
    index = build_index("tn3k", fake_tn3k)
    assert index.select(split="test").counts() == {"tn3k": {"normal": 0, "anomalous": 3}}
    assert len(index.select(split="train").records) == 2
    assert all(
        r.mask_path.parent.name == f"{r.split}-mask".replace("train-", "trainval-") for r in index.records
    )
    assert index.prompt_names() == {"tn3k": "thyroid"}
    batch_of("tn3k", fake_tn3k)


def test_missing_mask_folder(fake_tn3k: Path) -> None:
    shutil.rmtree(fake_tn3k / "test-mask")
    with pytest.raises(DatasetLayoutError, match="expected folder .*test-mask"):
        build_index("tn3k", fake_tn3k)
