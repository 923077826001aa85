"""Real-IAD: split, labels and masks from the JSON files (never the folders), samples grouped by view."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import DatasetLayoutError
from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems
from lightning_modules.base import ZeroShotModule
from tests.datamodules.conftest import write_image, write_mask
from tests_support import quiet_trainer


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


def _score(path: str) -> float:
    """A fixed pseudo-random score per view (its file name), whatever batch or process it comes in."""
    return (zlib.crc32(Path(path).name.encode()) % 9973) / 9973.0


class _NameScorer(ZeroShotModule):
    def predict_batch(self, batch):
        scores = torch.tensor([_score(p) for p in batch["image_path"]])
        return scores, batch["mask"] * 0 + scores[:, None, None]


def _colliding_layout(root: Path) -> dict[str, dict[str, tuple[float, int]]]:
    """Both classes number their samples alike; OK and NG samples share numbers (S0001 is OK, NG/QS and
    NG/AK); each NG view shows its defect or not at random (the JSON says OK for one that does not). Returns
    per class the independent sample table: sample folder -> (max view score, max JSON label)."""
    rng = np.random.default_rng(0)
    truth: dict[str, dict[str, tuple[float, int]]] = {}
    for category in ("audiojack", "zipper"):
        samples = [*((n, "OK", "OK") for n in (1, 2, 3, 4)), (1, "NG/QS", "NG_QS"), (5, "NG/QS", "NG_QS")]
        samples += [(1, "NG/AK", "NG_AK"), (2, "NG/AK", "NG_AK")]
        test = []
        for number, folder, kind in samples:
            for view in range(1, 6):
                relative = f"{folder}/S{number:04d}/{category}_{number:04d}_{kind}_C{view}_2023{number:02d}{view:02d}"
                write_image(root / "realiad_1024" / category / f"{relative}.jpg", seed=int(rng.integers(99)))
                shows = kind != "OK" and rng.random() < 0.6
                if kind != "OK":
                    write_mask(root / "realiad_1024" / category / f"{relative}.png", empty=not shows)
                test.append(
                    {
                        "category": category,
                        "anomaly_class": kind[3:] if shows else "OK",
                        "image_path": f"{relative}.jpg",
                        "mask_path": f"{relative}.png" if shows else None,
                    }
                )
        (root / "realiad_jsons").mkdir(parents=True, exist_ok=True)
        payload = {"meta": {"prefix": category, "normal_class": "OK"}, "train": test[:1], "test": test}
        (root / "realiad_jsons" / f"{category}.json").write_text(json.dumps(payload))
        table: dict[str, tuple[float, int]] = {}
        for s in test:
            folder = str(Path(s["image_path"]).parent)
            score, label = table.get(folder, (-1.0, 0))
            table[folder] = (max(score, _score(s["image_path"])), max(label, int(s["anomaly_class"] != "OK")))
        truth[category] = table
    return truth


@pytest.mark.parametrize("batch_size", [1, 7])
def test_sample_metrics_group_the_views_of_one_sample_only(tmp_path, batch_size):
    """Sample-level AUROC/AP against sklearn on an independent grouping (the sample's folder; its label the
    maximum of its views' JSON labels, its score the maximum of theirs), for samples whose numbers recur
    across classes, OK and NG folders and defect codes; and the view-level image AUROC."""
    truth = _colliding_layout(tmp_path / "Real-IAD")
    cfg = DataConfig(
        name="realiad", root=str(tmp_path / "Real-IAD"), num_workers=0, eval_batch_size=batch_size
    )
    module = _NameScorer()
    quiet_trainer().test(module, datamodule=AnomalyDataModule(cfg, image_size=32))
    result = module.test_results.per_category
    index = build_index("realiad", tmp_path / "Real-IAD").select(split="test")
    for category, table in truth.items():
        labels = np.array([label for _, label in table.values()])
        scores = np.array([score for score, _ in table.values()])
        assert len(table) == 8 and 0 < labels.sum() < 8
        assert result[category]["sample_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert result[category]["sample_ap"] == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )
        views = [r for r in index.records if r.category == category]
        view_labels = [r.label for r in views]
        assert all((r.mask_path is not None) == bool(r.label) for r in views)
        assert result[category]["image_auroc"] == pytest.approx(
            roc_auc_score(view_labels, [_score(str(r.image_path)) for r in views]), abs=1e-12
        )
