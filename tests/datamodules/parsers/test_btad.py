"""BTAD: normal folder ``ok``, anomalies in ``ko``, .bmp and .png mixed, masks without suffix."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_btad: Path) -> None:
    index = build_index("btad", fake_btad)
    assert index.categories() == ["01", "02", "03"]
    assert all(c == {"normal": 2, "anomalous": 2} for c in index.select(split="test").counts().values())
    assert {r.defect_type for r in index.records} == {"good", "ko"}
    assert set(index.prompt_names().values()) == {"product"}
    masks = {r.category: r.mask_path for r in index.records if r.label}
    assert masks["01"].suffix == ".png" and masks["03"].suffix == ".bmp"
    assert {r.image_path.suffix for r in index.records if r.category == "01"} == {".bmp"}
    assert all(r.mask_path.stem == r.image_path.stem for r in index.records if r.label)


def test_batch_loads(fake_btad: Path, batch_of) -> None:
    batch_of("btad", fake_btad)


def test_missing_mask(fake_btad: Path) -> None:
    (fake_btad / "03" / "ground_truth" / "ko" / "000.bmp").unlink()
    with pytest.raises(DatasetLayoutProblems, match="03/test/ko/000.bmp"):
        build_index("btad", fake_btad)
