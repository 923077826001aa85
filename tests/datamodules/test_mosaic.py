"""The authors' 2x2 mosaic (datamodules/mosaic.py): their paste, the anomalous tiles, the label rules, and
the datamodule applying it per (seed, epoch, sample)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image, write_mask
from PIL import Image

from datamodules import AnomalyDataModule, DataConfig
from datamodules.augment import TrainAugmentation
from datamodules.index import NORMAL_DEFECT, SampleRecord
from datamodules.mosaic import Mosaic, MosaicTiles, paste_records
from datamodules.resumable import derived_seed


def _record(category: str, defect: str, path: Path, mask: Path | None = None) -> SampleRecord:
    label = int(defect != NORMAL_DEFECT)
    return SampleRecord(category, category, path, mask, label, defect, "test")


def _records() -> list[SampleRecord]:
    """Category a: 2 good, 3 'crack' and 1 'hole' (masks); category b: 3 good."""
    out = [_record("a", NORMAL_DEFECT, Path(f"a/good/{i}.png")) for i in range(2)]
    out += [_record("a", "crack", Path(f"a/crack/{i}.png"), Path(f"a/gt/crack/{i}.png")) for i in range(3)]
    out += [_record("a", "hole", Path("a/hole/0.png"), Path("a/gt/hole/0.png"))]
    return out + [_record("b", NORMAL_DEFECT, Path(f"b/good/{i}.png")) for i in range(3)]


def test_the_tiles_are_the_category_s_anomalous_images_drawn_with_replacement():
    records = _records()
    rng = random.Random(0)
    tiles = MosaicTiles(records)
    drawn = [p for _ in range(200) for p in tiles.draw("a", rng)]
    assert set(drawn) == {2, 3, 4, 5}  # their merged test/anomaly folder: every defect type, no good image
    assert drawn.count(5) / len(drawn) == pytest.approx(1 / 4, abs=0.05)  # uniform over files, not folders
    assert tiles.draw("b", rng) is None  # no anomalous image: the item stays as it is


def test_settings_are_checked():
    with pytest.raises(ValueError, match="rate must lie in"):
        Mosaic(1.5)
    with pytest.raises(ValueError, match="label must be one of"):
        Mosaic(0.2, label="max")


def test_paste_is_full_size_in_reading_order_and_a_normal_mask_is_transposed(tmp_path):
    """Four 24 x 16 files on a 48 x 32 canvas; the normal tile's mask is their np.zeros((W, H)): 16 wide and
    24 high, so it covers the next row's cell, where the later tile pastes over it."""
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    masks = [write_mask(tmp_path / f"{i}_mask.png") for i in range(4)]
    records = [_record("a", "crack", paths[i], masks[i]) for i in range(4)]
    records[1] = _record("a", NORMAL_DEFECT, paths[1])  # top right: normal
    image, mask = paste_records(records)
    assert image.size == (48, 32) and image.mode == "RGB" and mask.mode == "L"
    canvas, grid = np.array(image), np.array(mask)
    for i, path in enumerate(paths):
        row, col = divmod(i, 2)
        np.testing.assert_array_equal(
            canvas[16 * row : 16 * row + 16, 24 * col : 24 * col + 24], np.array(Image.open(path))
        )
    assert grid[:16, 24:].max() == 0  # the normal tile
    assert grid[:16, :12].min() == 255 and grid[16:, :12].min() == 255  # left halves of the anomalous ones


@pytest.mark.parametrize("label", ["replaced", "any_tile"])
def test_the_datamodule_applies_it_per_seed_epoch_and_sample(synthetic_pair, label):
    source, _ = synthetic_pair
    mosaic = Mosaic(1.0, label)

    def dataset(seed: int):
        augmentation = TrainAugmentation(mosaic=mosaic)
        return AnomalyDataModule(
            DataConfig(name="synthetic", root=str(source), num_workers=0),
            32,
            augmentation=augmentation,
            seed=seed,
        ).train_dataset()

    plain = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(source), num_workers=0), 32
    ).train_dataset()
    first, again, other = dataset(1), dataset(1), dataset(2)
    items = [first[(0, i)] for i in range(len(first))]
    assert all(torch.equal(a["image"], again[(0, i)]["image"]) for i, a in enumerate(items))
    assert not all(torch.equal(a["image"], other[(0, i)]["image"]) for i, a in enumerate(items))
    assert not all(torch.equal(a["image"], first[(1, i)]["image"]) for i, a in enumerate(items))
    for item, original in zip(items, plain, strict=True):
        assert not torch.equal(item["image"], original["image"])  # rate 1: every item is a mosaic
        if label == "replaced":
            assert item["label"] == original["label"]
    if label == "any_tile":  # 1 when a tile is anomalous: the tiles the item's own generator drew
        for i, item in enumerate(items):
            draw = random.Random(derived_seed(1, 0, i, "augment"))
            assert draw.random() < mosaic.rate
            tiles = first.tiles.draw(first.records[i].category, draw)
            assert item["label"] == max(first.records[p].label for p in tiles)
