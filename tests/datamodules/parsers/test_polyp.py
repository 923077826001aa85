"""Polyp sets (ClinicDB, ColonDB, Kvasir, Endo): images/ + masks/ paired by stem; no normal images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.index import build_index, get_dataset_spec
from datamodules.parsers.common import DatasetLayoutProblems


@pytest.mark.parametrize("name", ["clinicdb", "colondb", "kvasir"])
def test_images_masks(name: str, request: pytest.FixtureRequest, batch_of) -> None:
    root = request.getfixturevalue(f"fake_{name}")
    index = build_index(name, root)
    assert index.select(split="test").counts() == {name: {"normal": 0, "anomalous": 3}}
    assert all(
        r.mask_path.stem == r.image_path.stem and r.mask_path.parent.name == "masks" for r in index.records
    )
    assert index.prompt_names() == {name: "colon"}
    assert index.version == "official" and index.warnings == []
    assert not index.capabilities()[name].image_metrics
    batch_of(name, root)


def test_pairing_is_by_name_not_order(fake_kvasir: Path) -> None:
    (fake_kvasir / "masks" / "1.jpg").rename(fake_kvasir / "masks" / "0.jpg")
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("kvasir", fake_kvasir)
    assert "no mask for" in str(info.value) and "images/1.jpg" in str(info.value)


def test_mask_without_image_is_a_problem(fake_colondb: Path, mask_writer) -> None:
    mask_writer(fake_colondb / "masks" / "99.png")
    index = build_index("colondb", fake_colondb)
    assert any("masks/99.png has no image" in p for p in index.problems)


def test_clinicdb_original_tif_layout(tmp_path: Path, image_writer, mask_writer, batch_of) -> None:
    root = tmp_path / "CVC-ClinicDB"
    for i in (1, 2):
        image_writer(root / "Original" / f"{i}.tif")
        mask_writer(root / "Ground Truth" / f"{i}.tif")
    index = build_index("clinicdb", root)
    assert len(index.records) == 2 and index.records[0].mask_path.parent.name == "Ground Truth"
    batch_of("clinicdb", root)


def test_subset_version(tmp_path: Path, image_writer, mask_writer) -> None:
    root = tmp_path / "Kvasir"
    for i in range(100):
        image_writer(root / "images" / f"{i}.png", size=(4, 3))
        mask_writer(root / "masks" / f"{i}.png", size=(4, 3))
    assert build_index("kvasir", root).version == "pranet-test"
    assert get_dataset_spec("kvasir").expected_counts("pranet-test") == {"kvasir": (0, 100)}


def test_endo_shared_masks(fake_endo: Path, batch_of) -> None:
    index = build_index("endo", fake_endo)
    assert index.select(split="test").counts() == {"endo": {"normal": 0, "anomalous": 3}}
    assert {r.image_path.parent.name for r in index.records} == {"images", "images_part2"}
    assert all(r.mask_path == fake_endo / "masks" / f"{r.image_path.stem}.png" for r in index.records)
    batch_of("endo", fake_endo)
    shutil.rmtree(fake_endo / "masks")
    with pytest.raises(Exception, match="expected folder .*masks"):
        build_index("endo", fake_endo)
