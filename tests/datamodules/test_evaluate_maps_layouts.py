"""``zsad evaluate-maps --dataset NAME`` reads the ground truth with the dataset's own parser, so maps saved for
any benchmark (``eval.save_maps`` mirrors the raw layout) can be scored again; fakes from this folder's conftest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from datamodules.images import load_mask
from datamodules.index import build_index
from lightning_modules.metrics import aupro
from pipelines.cli import main


def save_maps(
    root: Path, dataset: str, maps_dir: Path, seed: int = 0
) -> dict[str, tuple[np.ndarray, int, Path]]:
    """A random map per test image at the path eval.save_maps would use; returns them by that path."""
    rng = np.random.default_rng(seed)
    index = build_index(dataset, root).select(split="test")
    saved = {}
    for record in index.records:
        relative = record.image_path.relative_to(index.root).with_suffix("").as_posix()
        amap = rng.random((16, 24)).astype(np.float32) + 0.5 * record.label
        file = maps_dir / f"{relative}.npy"
        file.parent.mkdir(parents=True, exist_ok=True)
        np.save(file, amap)
        saved[relative] = (amap, record.label, record.mask_path, record.category)
    return saved


def evaluate(root: Path, maps_dir: Path, dataset: str, *extra: str) -> dict:
    out = maps_dir.parent / f"{dataset}.json"
    args = ["evaluate-maps", "--gt-root", str(root), "--maps", str(maps_dir), "--dataset", dataset]
    assert main([*args, "--output", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_visa_maps_are_found_in_its_nested_layout_and_scored_exactly(fake_visa, tmp_path):
    saved = save_maps(fake_visa, "visa", tmp_path / "maps")
    result = evaluate(fake_visa, tmp_path / "maps", "visa")
    assert set(result["per_category"]) == {"candle", "pcb1"}
    for category, metrics in result["per_category"].items():
        items = [v for v in saved.values() if v[3] == category]
        labels = [label for _, label, _, _ in items]
        assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, [m.max() for m, *_ in items]))
        masks = [load_mask(mask) if mask else np.zeros((16, 24), bool) for _, _, mask, _ in items]
        assert masks[-1].any()  # VisA masks hold class indices (1, 2), not 255
        assert metrics["aupro"] == pytest.approx(aupro([m for m, *_ in items], masks), abs=1e-12)
        pixels = np.concatenate([m.ravel() for m, *_ in items])
        assert metrics["pixel_auroc"] == pytest.approx(
            roc_auc_score(np.concatenate([g.ravel() for g in masks]), pixels)
        )


def test_a_dataset_without_masks_gets_image_metrics_and_says_why_pixel_ones_are_missing(
    fake_headct, tmp_path
):
    saved = save_maps(fake_headct, "headct", tmp_path / "maps")
    result = evaluate(fake_headct, tmp_path / "maps", "headct")
    (category,) = result["per_category"]
    metrics = result["per_category"][category]
    labels = [label for _, label, _, _ in saved.values()]
    assert metrics["image_auroc"] == pytest.approx(
        roc_auc_score(labels, [m.max() for m, *_ in saved.values()])
    )
    assert metrics["pixel_auroc"] is None and "pixel" in result["missing"][category]["pixel_auroc"]


def test_unknown_dataset_and_missing_map_are_one_line_errors(fake_visa, tmp_path, capsys):
    saved = save_maps(fake_visa, "visa", tmp_path / "maps")
    args = ["evaluate-maps", "--gt-root", str(fake_visa), "--maps", str(tmp_path / "maps")]
    assert main([*args, "--dataset", "nosuch"]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err
    (tmp_path / "maps" / f"{next(iter(saved))}.npy").unlink()
    assert main([*args, "--dataset", "visa"]) == 2
    assert "no anomaly map for" in capsys.readouterr().err


def test_region_datasets_get_spro_at_the_ground_truth_resolution(fake_mvtec_loco, tmp_path):
    """MVTec LOCO's maps are scored as MVTec's own LOCO evaluation does: regions at the image's resolution
    with the saturation rules of defects_config.json (here: the functional sPRO on the same regions)."""
    from datamodules.regions import load_regions
    from lightning_modules.metrics.spro import spro

    save_maps(fake_mvtec_loco, "mvtec_loco", tmp_path / "maps")
    result = evaluate(fake_mvtec_loco, tmp_path / "maps", "mvtec_loco", "--spro-fpr-limit", "0.3")
    index = build_index("mvtec_loco", fake_mvtec_loco).select(split="test")
    for category in index.categories():
        maps, regions, areas = [], [], []
        for record in index.select(categories=[category]).records:
            relative = record.image_path.relative_to(index.root).with_suffix("")
            maps.append(np.load(tmp_path / "maps" / f"{relative}.npy"))
            found = load_regions(record.mask_path, index.region_rules[category]) if record.label else []
            regions.append([array for array, _ in found])
            areas.append([rule.saturation_area(int(array.sum())) for array, rule in found])
        expected = spro(maps, regions, areas, fpr_limit=0.3)
        assert result["per_category"][category]["spro"] == pytest.approx(expected, abs=1e-12)
    assert "spro" in result["metrics"]
    # the good images both rows hold, saved once by this tool: read for both rows, and said so
    shared = len(index.shared_images())
    assert shared and any(
        f"{2 * shared} maps of images that several categories hold" in n for n in result["notes"]
    )


def test_sample_level_metrics_and_mask_free_categories(fake_realiad, fake_bmad, tmp_path):
    """Real-IAD: a sample scores the maximum of its views; BMAD: pixel metrics only where a subset has masks."""
    saved = save_maps(fake_realiad, "realiad", tmp_path / "realiad")
    result = evaluate(fake_realiad, tmp_path / "realiad", "realiad")
    index = build_index("realiad", fake_realiad).select(split="test", categories=["zipper"])
    by_sample: dict[str, tuple[float, int]] = {}
    for record in index.records:
        amap, label, _, _ = saved[record.image_path.relative_to(index.root).with_suffix("").as_posix()]
        score, anomalous = by_sample.get(record.group, (-np.inf, 0))
        by_sample[record.group] = (max(score, float(amap.max())), max(anomalous, label))
    scores, labels = zip(*by_sample.values(), strict=True)
    assert len(by_sample) == 3
    assert result["per_category"]["zipper"]["sample_auroc"] == pytest.approx(roc_auc_score(labels, scores))

    save_maps(fake_bmad, "bmad", tmp_path / "bmad")
    result = evaluate(fake_bmad, tmp_path / "bmad", "bmad")
    assert result["per_category"]["Brain"]["pixel_auroc"] is not None
    assert result["per_category"]["Chest"]["pixel_auroc"] is None
    assert result["per_category"]["Chest"]["image_auroc"] is not None
