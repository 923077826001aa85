"""VisA: the split comes from split_csv/1cls.csv; masks hold class indices, not 255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import DatasetLayoutError
from datamodules.images import load_mask
from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index_from_csv(fake_visa: Path) -> None:
    index = build_index("visa", fake_visa)
    assert index.categories() == ["candle", "pcb1"]
    assert index.select(split="test").counts() == {
        "candle": {"normal": 2, "anomalous": 2},
        "pcb1": {"normal": 2, "anomalous": 2},
    }
    assert len(index.select(split="train").records) == 2
    for r in index.records:
        assert (r.mask_path is not None) == bool(r.label)
        if r.label:
            assert r.mask_path.stem == r.image_path.stem and r.image_path.suffix == ".JPG"
    assert index.prompt_names() == {"candle": "candle", "pcb1": "pcb1"}
    assert index.warnings == []  # split_csv/ and the class folders are expected


def test_class_index_masks_are_binarised(fake_visa: Path) -> None:
    mask_path = next(
        r.mask_path for r in build_index("visa", fake_visa).records if r.category == "pcb1" and r.label
    )
    mask = load_mask(mask_path)
    assert mask.dtype == bool and mask.shape == (16, 24) and mask[:, :12].all() and not mask[:, 12:].any()
    assert np.asarray(Image.open(mask_path)).max() == 2  # the raw value is a class index


def test_batch_loads(fake_visa: Path, batch_of) -> None:
    batch_of("visa", fake_visa)


def test_missing_csv(fake_visa: Path) -> None:
    (fake_visa / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="split_csv/1cls.csv not found"):
        build_index("visa", fake_visa)


def test_csv_rows_pointing_nowhere(fake_visa: Path) -> None:
    (fake_visa / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    (fake_visa / "pcb1" / "Data" / "Images" / "Normal" / "0002.JPG").unlink()
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("visa", fake_visa)
    text = "\n".join(info.value.problems)
    assert "Masks/Anomaly/001.png" in text and "0002.JPG does not exist" in text
