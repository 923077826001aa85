"""MVTec LOCO AD: a logical and a structural row per object; masks are folders of region PNGs with the
saturation rules of defects_config.json."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules.errors import CorruptImageError, DatasetLayoutError
from datamodules.images import load_mask
from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems
from datamodules.regions import load_regions


def test_rows_by_type(fake_mvtec_loco: Path) -> None:
    index = build_index("mvtec_loco", fake_mvtec_loco)
    assert index.version == "by_type"
    assert index.categories() == [
        "breakfast_box_logical", "breakfast_box_structural", "pushpins_logical", "pushpins_structural",
    ]  # fmt: skip
    counts = index.select(split="test").counts()
    assert counts["breakfast_box_logical"] == counts["pushpins_structural"] == {"normal": 2, "anomalous": 2}
    logical = index.select(split="test", categories=["breakfast_box_logical"]).records
    structural = index.select(split="test", categories=["breakfast_box_structural"]).records
    assert [r.image_path for r in logical if not r.label] == [r.image_path for r in structural if not r.label]
    assert {r.defect_type for r in logical if r.label} == {"logical_anomalies"}
    assert all(r.mask_path.is_dir() for r in logical if r.label)
    assert index.prompt_names()["pushpins_logical"] == "pushpins"
    assert set(index.region_rules) == set(index.categories())
    assert index.region_rules["pushpins_logical"][1].saturation_threshold == 10
    assert index.warnings == [] and index.problems == []  # license.txt, readme.txt


def test_rows_per_object(fake_mvtec_loco: Path) -> None:
    index = build_index("mvtec_loco", fake_mvtec_loco, rows="object")
    assert index.version == "object" and index.categories() == ["breakfast_box", "pushpins"]
    assert index.select(split="test").counts()["pushpins"] == {"normal": 2, "anomalous": 4}


def test_mask_folders_are_unions_of_regions(fake_mvtec_loco: Path) -> None:
    folder = fake_mvtec_loco / "breakfast_box" / "ground_truth" / "logical_anomalies" / "000"
    union = load_mask(folder)
    regions = load_regions(
        folder, build_index("mvtec_loco", fake_mvtec_loco).region_rules["breakfast_box_logical"]
    )
    assert [rule.name for _, rule in regions] == ["missing_item", "scratch"]
    assert np.array_equal(union, regions[0][0] | regions[1][0]) and union.sum() == 6 * 8 + 5 * 8


def test_batch_loads_with_regions(fake_mvtec_loco: Path, batch_of) -> None:
    batch = batch_of("mvtec_loco", fake_mvtec_loco, image_size=48)
    regions, saturation = batch["regions"], batch["region_saturation"]
    assert regions.shape == (len(batch["label"]), 2, 48, 48)  # padded to the largest folder's 2 regions
    assert bool((regions.any(1) == batch["mask"].bool()).all())  # the mask is the regions' union
    assert bool((saturation[batch["label"] == 0] == 0).all())
    first = saturation[batch["label"] == 1][0]
    # region 0: value 255, relative 0.5 -> int(0.5 * area at 48 px); region 1: value 1, 10 px of the
    # 24x16 original -> 10 * (48 * 48) / (24 * 16) = 60 px, capped at the region's area
    area0, area1 = (int(regions[batch["label"] == 1][0][k].sum()) for k in (0, 1))
    assert first.tolist() == [float(int(0.5 * area0)), float(min(60.0, area1))]


def test_missing_masks_config_and_bad_regions(fake_mvtec_loco: Path) -> None:
    shutil.rmtree(fake_mvtec_loco / "pushpins" / "ground_truth" / "structural_anomalies" / "001")
    (fake_mvtec_loco / "breakfast_box" / "defects_config.json").unlink()
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("mvtec_loco", fake_mvtec_loco)
    assert sorted(info.value.problems) == [
        f"missing {fake_mvtec_loco}/breakfast_box/defects_config.json (the sPRO saturation rules of breakfast_box)",
        f"no mask for {fake_mvtec_loco}/pushpins/test/structural_anomalies/001.png (expected a folder of region "
        f"PNGs {fake_mvtec_loco}/pushpins/ground_truth/structural_anomalies/001/)",
    ]
    (fake_mvtec_loco / "breakfast_box" / "defects_config.json").write_text('[{"defect_name": "x"}]')
    with pytest.raises(DatasetLayoutError, match="entry 0 lacks 'pixel_value'"):
        build_index("mvtec_loco", fake_mvtec_loco)


def test_a_region_value_missing_from_the_config_is_named(fake_mvtec_loco: Path, tmp_path: Path) -> None:
    folder = fake_mvtec_loco / "pushpins" / "ground_truth" / "logical_anomalies" / "001"
    rules = build_index("mvtec_loco", fake_mvtec_loco).region_rules["pushpins_logical"]
    with pytest.raises(CorruptImageError, match="pixel value 255, which defects_config.json does not list"):
        load_regions(folder, {1: rules[1]})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorruptImageError, match="holds no PNG"):
        load_mask(empty)


def test_the_rows_folder_is_their_objects(fake_mvtec_loco: Path) -> None:
    """The prompts' "folder" word (the authors' cls_name: VAND, AnoVL, AdaCLIP, Bayes-PFL) of a row is its
    object's folder: "breakfast_box_logical" would name the anomaly type in the text prompts, and differently
    in the two rows that share the good images."""
    from datamodules.config import DataConfig
    from datamodules.datamodule import AnomalyDataModule

    rows = AnomalyDataModule(DataConfig(name="mvtec_loco", root=str(fake_mvtec_loco)), image_size=32)
    assert rows.categories == [
        f"{o}_{t}" for o in ("breakfast_box", "pushpins") for t in ("logical", "structural")
    ]
    assert rows.category_folders == ["breakfast_box", "breakfast_box", "pushpins", "pushpins"]
    objects = DataConfig(name="mvtec_loco", root=str(fake_mvtec_loco), options={"rows": "object"})
    assert AnomalyDataModule(objects, image_size=32).category_folders == ["breakfast_box", "pushpins"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_training_set_of_rows_holds_each_image_once(fake_mvtec_loco: Path, split: str) -> None:
    """Both rows of an object list its good images: a training set on MVTec LOCO saw each of them twice
    (twice the weight of the anomalous images of either type); it holds each image file once, the same
    images as the per-object rows."""
    from datamodules.config import DataConfig
    from datamodules.datamodule import AnomalyDataModule

    def training(options: dict[str, str]) -> list[tuple[Path, int]]:
        cfg = DataConfig(name="mvtec_loco", root=str(fake_mvtec_loco), train_split=split, options=options)
        index = AnomalyDataModule(cfg, image_size=32).train_index
        return sorted((r.image_path, r.label) for r in index.records)

    rows, objects = training({}), training({"rows": "object"})
    assert rows == objects and len({path for path, _ in rows}) == len(rows)
    all_rows = build_index("mvtec_loco", fake_mvtec_loco).select(split=split).records
    assert len(all_rows) > len(rows)  # the rows' lists do repeat the good images
