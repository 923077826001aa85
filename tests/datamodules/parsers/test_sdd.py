"""SDD: raw KolektorSDD cut into thirds (materialised in a cache) or an already converted copy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import DatasetLayoutError
from datamodules.images import load_mask
from datamodules.index import build_index, get_dataset_spec
from datamodules.parsers import sdd
from datamodules.parsers.common import DatasetLayoutProblems


def test_thirds_and_split_rule() -> None:
    assert sdd.thirds(1240) == [(0, 413), (413, 826), (826, 1240)]
    assert sdd.thirds(1241) == [(0, 413), (413, 827), (827, 1241)]
    # 1143 normal thirds of the real data -> 286 test normals (with the 54 anomalous ones: 286 / 54)
    assert len(sdd.split_normals(1143)) == 286
    assert sdd.split_normals(15) == sdd.split_normals(15)  # deterministic


def test_raw_thirds(fake_sdd_raw: Path) -> None:
    index = build_index("sdd", fake_sdd_raw)
    assert index.version == "raw-thirds" and index.categories() == ["sdd"] and index.root == fake_sdd_raw
    assert index.prompt_names() == {"sdd": "electrical commutators"}
    # 6 images -> 18 thirds; kos01/Part1 hits the middle third, kos02/Part0 rows 8..12 hit top and middle
    test = index.select(split="test")
    assert test.counts() == {"sdd": {"normal": 4, "anomalous": 3}}  # ceil(0.25 * 15) = 4 normal thirds
    assert len(index.select(split="train").records) == 11
    anomalous = sorted(r.image_path.stem for r in test.records if r.label)
    assert anomalous == ["kos01_Part1_1", "kos02_Part0_0", "kos02_Part0_1"]
    for r in index.records:
        w, h = Image.open(r.image_path).size
        assert (w, h) == (12, 10)
        assert str(r.image_path).startswith(str(fake_sdd_raw / sdd.CACHE_DIR_NAME))
        if r.label:
            mask = load_mask(r.mask_path)
            assert mask.shape == (10, 12) and mask.any()
    # the middle third of kos01/Part1 is rows 10..20 of the raw image; the raw defect rows are 12..18
    mask = load_mask(next(r.mask_path for r in test.records if r.image_path.stem == "kos01_Part1_1"))
    assert mask[2:8, 2:8].all() and not mask[:2].any() and not mask[8:].any()
    raw = np.asarray(Image.open(fake_sdd_raw / "kos01" / "Part1.jpg"))
    crop = np.asarray(
        Image.open(next(r.image_path for r in test.records if r.image_path.stem == "kos01_Part1_1"))
    )
    assert np.array_equal(crop, raw[10:20])  # lossless crop in the source's own mode


def test_cache_is_reused_and_rebuilt_on_change(fake_sdd_raw: Path) -> None:
    first = build_index("sdd", fake_sdd_raw)
    stamp = first.records[0].image_path.stat().st_mtime_ns
    again = build_index("sdd", fake_sdd_raw)
    assert [r.image_path for r in again.records] == [r.image_path for r in first.records]
    assert again.records[0].image_path.stat().st_mtime_ns == stamp  # not rewritten
    label = fake_sdd_raw / "kos01" / "Part2_label.bmp"
    array = np.zeros((30, 12), dtype=np.uint8)
    array[25:28, 1:4] = 255
    Image.fromarray(array).save(label)
    os.utime(label, ns=(1, 1))
    changed = build_index("sdd", fake_sdd_raw)
    assert changed.select(split="test").counts()["sdd"]["anomalous"] == 4
    caches = [p for p in (fake_sdd_raw / sdd.CACHE_DIR_NAME).iterdir() if p.is_dir()]
    assert len(caches) == 1  # the stale conversion was removed


def test_cache_falls_back_when_root_is_read_only(
    fake_sdd_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdd, "_can_write", lambda folder: False)
    monkeypatch.setenv("ZSAD_CACHE_DIR", str(tmp_path / "cache"))
    index = build_index("sdd", fake_sdd_raw)
    assert all(str(r.image_path).startswith(str(tmp_path / "cache" / "sdd_thirds")) for r in index.records)


def test_batch_loads_raw(fake_sdd_raw: Path, batch_of) -> None:
    batch_of("sdd", fake_sdd_raw)


def test_converted_copy(fake_sdd_converted: Path, batch_of) -> None:
    index = build_index("sdd", fake_sdd_converted)
    assert index.version == "mvtec-like" and index.categories() == ["sdd"]
    assert index.select(split="test").counts() == {"sdd": {"normal": 3, "anomalous": 2}}
    batch_of("sdd", fake_sdd_converted)
    spec = get_dataset_spec("sdd")
    assert spec.expected_counts("raw-thirds") == spec.expected_counts("mvtec-like") == {"sdd": (286, 54)}
    assert spec.expected_counts("mvtec-like-anomalyclip") == {"sdd": (181, 74)}


def test_broken_layouts(fake_sdd_raw: Path, fake_sdd_converted: Path, tmp_path: Path) -> None:
    (fake_sdd_raw / "kos02" / "Part2_label.bmp").unlink()
    Image.fromarray(np.zeros((20, 12), dtype=np.uint8)).save(fake_sdd_raw / "kos01" / "Part0_label.bmp")
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("sdd", fake_sdd_raw)
    assert any("no label for" in p and "Part2.jpg" in p for p in info.value.problems)
    (fake_sdd_raw / "kos02" / "Part2.jpg").unlink()
    with pytest.raises(DatasetLayoutProblems, match="label .*Part0_label.bmp is 12x20 but image .* is 12x30"):
        build_index("sdd", fake_sdd_raw)
    with pytest.raises(DatasetLayoutError, match="is a category folder"):
        build_index("sdd", fake_sdd_converted / "SDD")
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetLayoutError, match="neither KolektorSDD's kos01..kos50"):
        build_index("sdd", tmp_path / "other")
