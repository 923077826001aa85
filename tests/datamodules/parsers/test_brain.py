"""BrainMRI (nested duplicate folder) and Br35H (stray pred/): no/ and yes/ folders, no masks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index


def test_brainmri_uses_the_nested_copy_once(fake_brainmri: Path, batch_of) -> None:
    index = build_index("brainmri", fake_brainmri)
    assert index.select(split="test").counts() == {"brainmri": {"normal": 2, "anomalous": 3}}
    assert all(r.image_path.parent.parent.name == "brain_tumor_dataset" for r in index.records)
    assert {r.image_path.suffix for r in index.records} == {".jpg", ".jpeg", ".JPG", ".png"}
    assert sum("duplicate" in w for w in index.warnings) == 2
    assert not index.has_masks and index.prompt_names() == {"brainmri": "brain"}
    batch_of("brainmri", fake_brainmri)


def test_brainmri_without_nesting(fake_brainmri: Path) -> None:
    shutil.rmtree(fake_brainmri / "brain_tumor_dataset")
    assert len(build_index("brainmri", fake_brainmri).records) == 5
    shutil.rmtree(fake_brainmri / "yes")
    with pytest.raises(DatasetLayoutError, match="expected folder .*yes"):
        build_index("brainmri", fake_brainmri)


def test_br35h_ignores_pred(fake_br35h: Path, batch_of) -> None:
    index = build_index("br35h", fake_br35h)
    assert index.select(split="test").counts() == {"br35h": {"normal": 2, "anomalous": 2}}
    assert all(r.image_path.parent.name in ("no", "yes") for r in index.records)
    assert any("pred" in w and "unlabelled" in w for w in index.warnings)
    batch_of("br35h", fake_br35h)
