"""Real-IAD: split, labels and masks from the JSON files (never the folders), samples grouped by view."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_labels_come_from_the_json(fake_realiad: Path) -> None:
    index = build_index("realiad", fake_realiad)
    assert index.version == "multi_view" and index.categories() == ["audiojack", "zipper"]
    # 3 test samples x 5 views; of sample 3's five NG views, C3 is listed as OK: 11 normal, 4 anomalous
    assert index.select(split="test").counts()["audiojack"] == {"normal": 11, "anomalous": 4}
    view3 = next(r for r in index.records if r.image_path.name.startswith("audiojack_0003_NG_QS_C3"))
    assert view3.label == 0 and view3.mask_path is None and view3.image_path.parts[-4] == "NG"
    view1 = next(r for r in index.records if r.image_path.name.startswith("audiojack_0003_NG_QS_C1"))
    assert view1.label == 1 and view1.mask_path == view1.image_path.with_suffix(".png")
    assert view1.defect_type == "QS" and view1.group == view3.group == "audiojack_0003_NG_QS"
    assert {r.group for r in index.records if r.category == "audiojack" and r.split == "test"} == {
        "audiojack_0001_OK", "audiojack_0002_OK", "audiojack_0003_NG_QS",
    }  # fmt: skip
    assert len(index.select(split="train").records) == 10 and index.warnings == []


def test_single_view_and_options(fake_realiad: Path) -> None:
    index = build_index("realiad", fake_realiad, version="single_view")
    assert index.version == "single_view"
    assert index.select(split="test").counts()["zipper"] == {"normal": 2, "anomalous": 1}
    with pytest.raises(DatasetLayoutError, match="no split files for version fuiad_0.4"):
        build_index("realiad", fake_realiad, version="fuiad_0.4")
    with pytest.raises(DatasetLayoutError, match="no image folder .*realiad_512"):
        build_index("realiad", fake_realiad, resolution="512")
    with pytest.raises(DatasetLayoutError, match="version must be one of"):
        build_index("realiad", fake_realiad, version="sv")


def test_json_folders_nested_in_realiad_jsons_are_found(fake_realiad: Path) -> None:
    shutil.move(fake_realiad / "realiad_jsons_sv", fake_realiad / "realiad_jsons" / "realiad_jsons_sv")
    assert build_index("realiad", fake_realiad, version="single_view").version == "single_view"


def test_batch_loads_with_group_ids(fake_realiad: Path, batch_of) -> None:
    batch = batch_of("realiad", fake_realiad)
    groups = batch["group_id"]
    assert groups.min() >= 0 and len(set(groups.tolist())) == 6  # 3 samples x 2 classes, 5 views each
    assert all((groups == g).sum() == 5 for g in set(groups.tolist()))


def test_missing_files_are_named(fake_realiad: Path) -> None:
    base = fake_realiad / "realiad_1024" / "zipper" / "NG" / "QS" / "S0003"
    mask = next(base.glob("*_C1_*.png"))
    mask.unlink()
    next(base.glob("*_C2_*.jpg")).unlink()
    with pytest.raises(DatasetLayoutProblems) as info:
        build_index("realiad", fake_realiad)
    text = "\n".join(info.value.problems)
    assert f"zipper.json test[10]: mask {mask} of" in text and "_C2_" in text and "does not exist" in text
    payload = json.loads((fake_realiad / "realiad_jsons" / "audiojack.json").read_text())
    del payload["meta"]
    (fake_realiad / "realiad_jsons" / "audiojack.json").write_text(json.dumps(payload))
    with pytest.raises(DatasetLayoutError, match="audiojack.json lacks the keys meta, train and test"):
        build_index("realiad", fake_realiad)
