"""Pictures of an evaluation: files in the run folder, thresholds in results.json, images in the W&B run."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score
from wandb_support import logged_values, wandb_records

from datamodules.errors import ConfigError
from datamodules.images import load_mask
from lightning_modules.metrics import trapezoid_area
from pipelines.cli import main
from pipelines.visualize import EvaluationPictures, GalleryHeaps, GalleryItem, select_gallery


def _item(score: float, sample_id: int) -> GalleryItem:
    return GalleryItem(score, sample_id, f"{sample_id}.png", 0, None, None)


def test_gallery_heaps_keep_only_the_highest_and_lowest_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500)
    heaps = GalleryHeaps(size=5)  # 3 most and 2 least anomalous
    built = []

    def item_of(score, i):
        built.append(i)
        return _item(score, i)

    for i, score in enumerate(scores):
        heaps.add(i % 2, float(score), lambda s=float(score), i=i: item_of(s, i))
    assert len(built) < 100  # items (maps) are only built for samples that enter a heap
    for category in (0, 1):
        ids = np.flatnonzero(np.arange(500) % 2 == category)
        order = ids[np.argsort(-scores[ids], kind="stable")]
        chosen = select_gallery(heaps.items()[category], 5)
        assert [i.sample_id for i in chosen] == [*order[:3], *order[-2:]]


def test_select_gallery_shows_small_categories_once():
    items = [_item(0.3, 1), _item(0.9, 2), _item(0.3, 1)]
    assert [i.sample_id for i in select_gallery(items, 8)] == [2, 1]


def test_a_negative_gallery_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="eval.gallery_size"):
        EvaluationPictures(tmp_path, "t", [], gallery_size=-1, fpr_limit=0.3)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_evaluation_writes_curves_gallery_thresholds_and_logs_them_to_wandb(tmp_path, synthetic_pair):
    _, target = synthetic_pair
    data = tmp_path / "tgt.yaml"
    data.write_text(f"name: synthetic\nroot: {target}\neval_batch_size: 3\nnum_workers: 0\n")
    run_dir = tmp_path / "run"
    overrides = [
        "method=clip_tiny",
        f"targets=[{data}]",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "eval.save_maps=true",
        "eval.gallery_size=4",
        "logger.wandb.mode=offline",
        f"run_dir={run_dir}",
    ]
    assert main(["test", "clip_all", *overrides]) == 0
    results = json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]
    scores = {row["image"]: row for row in _rows(run_dir / "maps" / "synthetic" / "image_scores.csv")}
    for category, metrics in results["categories"].items():
        folder = run_dir / "plots" / "synthetic" / category
        roc = [r for r in _rows(folder / "roc.csv") if r["level"] == "image"]
        area = trapezoid_area([float(r["fpr"]) for r in roc], [float(r["tpr"]) for r in roc], 1.0)
        assert area == pytest.approx(metrics["image_auroc"])
        assert {r["level"] for r in _rows(folder / "pr.csv")} == {"image", "pixel"} and _rows(
            folder / "pro.csv"
        )
        # The stored F1-optimal threshold reproduces F1-max on the run's own image scores.
        mine = [row for row in scores.values() if row["category"] == category]
        labels = [int(r["label"]) for r in mine]
        values = np.array([float(r["score"]) for r in mine])
        assert roc_auc_score(labels, values) == pytest.approx(metrics["image_auroc"])
        threshold = metrics["f1_thresholds"]["image"]
        assert f1_score(labels, values >= threshold) == pytest.approx(metrics["image_f1_max"])
        assert isinstance(metrics["f1_thresholds"]["pixel"], float)
        for name in ("curves.png", "gallery.png"):
            with Image.open(folder / name) as picture:
                assert picture.format == "PNG" and picture.width > 400

    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    logged = logged_values(wandb_dir)
    for category in results["categories"]:
        for name in ("curves", "gallery"):
            assert logged[f"plots/synthetic/{category}/{name}/_type"] == ["image-file"]
            assert (wandb_dir / "files" / logged[f"plots/synthetic/{category}/{name}/path"][0]).is_file()
    assert logged["plots/synthetic/gallery/nrows"] == [4 * len(results["categories"])]
    # The gallery table (kept in the run's table artifact): image with ground-truth and predicted masks.
    (table_artifact,) = [
        r.artifact
        for r in wandb_records(next(wandb_dir.glob("run-*.wandb")))
        if r.WhichOneof("record_type") == "artifact" and "gallery" in r.artifact.name
    ]
    files = {entry.path: entry.local_path for entry in table_artifact.manifest.contents}
    table = json.loads(Path(files["plots/synthetic/gallery.table.json"]).read_text())
    assert table["columns"] == ["category", "image_path", "label", "score", "image", "anomaly_map"]
    for _, image_path, label, _, image, heatmap in table["data"]:
        assert heatmap["_type"] == "image-file" and image["_type"] == "image-file"
        ground_truth = np.asarray(Image.open(files[image["masks"]["ground_truth"]["path"]]))
        assert Image.open(files[image["masks"]["prediction"]["path"]]).size == (32, 32)
        path = Path(image_path)
        if label:  # the synthetic images are 32 px, the evaluation size: the mask is the dataset's own
            expected = load_mask(
                path.parents[2] / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            )
        else:
            expected = np.zeros((32, 32), dtype=bool)
        np.testing.assert_array_equal(ground_truth > 0, expected)
    by_category = {}
    for category, _, _, score, *_ in table["data"]:
        by_category.setdefault(category, []).append(score)
    for category, shown in by_category.items():
        everything = sorted(
            (float(r["score"]) for r in scores.values() if r["category"] == category), reverse=True
        )
        assert shown == pytest.approx(everything[:2] + everything[-2:])


def test_picture_and_map_writers_leave_the_old_file_or_none_and_no_temp_on_a_full_disk(tmp_path, monkeypatch):
    import errno
    import os

    import tifffile

    from datamodules.errors import WriteFailedError
    from pipelines.prediction_writer import _write_tiff
    from pipelines.visualize import _figure, _save_figure, save_png

    image = np.full((4, 4, 3), 200, dtype=np.uint8)
    writers = {
        "a.png": lambda path: save_png(image, path),
        "b.png": lambda path: _save_figure(_figure(1, 1, 20), path),
        "c.tiff": lambda path: _write_tiff(path, np.ones((4, 4))),
    }
    for name, write in writers.items():
        write(tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), image)
    assert np.array_equal(tifffile.imread(tmp_path / "c.tiff"), np.ones((4, 4), dtype=np.float32))

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    for name, write in writers.items():
        with pytest.raises(WriteFailedError, match=f"cannot write {re.escape(name)} in .*ENOSPC"):
            write(tmp_path / name)
        with pytest.raises(WriteFailedError):
            write(tmp_path / f"new-{name}")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp, no new file
