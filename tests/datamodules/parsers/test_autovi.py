"""AutoVI: masks are folders of region PNGs; a category may sit in a wrapper folder of its own name."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_autovi: Path) -> None:
    index = build_index("autovi", fake_autovi)
    assert index.categories() == ["engine_wiring", "pipe_clip"]
    assert index.select(split="test").counts()["engine_wiring"] == {"normal": 2, "anomalous": 2}
    anomalous = [r for r in index.records if r.label]
    assert all(r.mask_path.is_dir() and r.mask_path.name == r.image_path.stem for r in anomalous)
    assert {r.defect_type for r in anomalous} == {"fastening"}
    assert set(index.region_rules) == {"engine_wiring"}
    assert index.warnings == [f"no {fake_autovi}/pipe_clip/defects_config.json: no sPRO for pipe_clip"]


def test_batch_loads(fake_autovi: Path, batch_of) -> None:
    batch = batch_of("autovi", fake_autovi)
    wiring = batch["category_id"] == 0
    assert batch["region_saturation"][wiring & (batch["label"] == 1)].min() > 0
    assert not batch["regions"][~wiring].any()  # no rules: no regions (no sPRO) for pipe_clip


def test_missing_mask_is_named(fake_autovi: Path) -> None:
    for region in (fake_autovi / "pipe_clip" / "ground_truth" / "fastening" / "0001").iterdir():
        region.unlink()
    with pytest.raises(DatasetLayoutProblems, match="no mask for .*pipe_clip/test/fastening/0001.png"):
        build_index("autovi", fake_autovi)
