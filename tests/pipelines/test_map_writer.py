"""``eval.save_maps`` (pipelines/map_writer.py) on a dataset whose rows share images: MVTec LOCO's logical and
structural rows both hold the object's good test images, and image_scores.csv (what ``zsad report
--bootstrap`` resamples per category and ``zsad evaluate-maps --image-scores`` reads) must list them in
both rows, with the scores the evaluation gave them (under a rule that depends on the whole category: over
the object's test images, both rows together), and their maps (which may depend on the row) once per row."""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from lightning_modules.base import ZeroShotModule
from lightning_modules.metrics.category_scores import CategoryScoreRule
from pipelines.cli import main
from pipelines.map_writer import IMAGE_SCORES_FILE, MapWriter
from tests.datamodules.conftest import write_mvtec_loco
from tests_support import quiet_trainer

OBJECTS = ("breakfast_box", "pushpins")
TYPES = {"logical": "logical_anomalies", "structural": "structural_anomalies"}


def _part(path: str) -> float:
    """A fixed number per image (its path below the objects), the same in both rows."""
    return 1.0 + (zlib.crc32("/".join(Path(path).with_suffix("").parts[-4:]).encode()) % 997) / 997.0


# a score that depends on the whole category: each image's part over the category's largest
RULE = CategoryScoreRule("over_max", 1, lambda p: p[:, 0] / p[:, 0].max(), lambda p: p[:, 0])


class _PerImage(ZeroShotModule):
    rule: CategoryScoreRule | None = None

    def image_score_rule(self):
        return self.rule

    def predict_batch(self, batch):
        parts = torch.tensor([[_part(p)] for p in batch["image_path"]])
        scores = parts if self.rule is not None else parts[:, 0]
        # a map that depends on the row too (as MuSc's over the row's images): one shared map file would
        # give one row the other's maps
        row = batch["category_id"].float()[:, None, None]
        return scores, batch["mask"] * 0 + parts[:, :1, None] + torch.linspace(0, 1, 32)[None, None] * row


@pytest.mark.parametrize("rule", [None, RULE], ids=["per_image", "category_rule"])
def test_images_two_rows_share_are_listed_in_both_with_each_rows_score(tmp_path, rule):
    root = write_mvtec_loco(tmp_path / "loco", n_test=3)
    module = _PerImage()
    module.rule = rule
    out = tmp_path / "maps"
    cfg = DataConfig(name="mvtec_loco", root=str(root), num_workers=0, eval_batch_size=4)
    datamodule = AnomalyDataModule(cfg, image_size=32)
    quiet_trainer(callbacks=[MapWriter(out)]).test(module, datamodule=datamodule)
    categories = datamodule.categories
    rows = list(csv.DictReader((out / IMAGE_SCORES_FILE).open()))
    for obj in OBJECTS:
        for kind, folder in TYPES.items():
            row = f"{obj}_{kind}"
            images = [f"{obj}/test/{sub}/{i:03d}" for sub in ("good", folder) for i in range(3)]
            parts = {image: _part(image) for image in images}
            # the rule sees the object's test images (both rows; a good image once), not the row's
            top = max(
                _part(f"{obj}/test/{sub}/{i:03d}") for sub in ("good", *TYPES.values()) for i in range(3)
            )
            expected = {  # a good image's row and map file: {stem}@{row}
                f"{image}@{row}" if "/good/" in image else image: (p / top if rule is not None else p)
                for image, p in parts.items()
            }
            listed = {r["image"]: float(r["score"]) for r in rows if r["category"] == row}
            assert listed.keys() == expected.keys()
            for image, score in expected.items():
                assert listed[image] == pytest.approx(score, abs=1e-6)
            row_id = categories.index(row)
            for image in expected:  # each row's own map, also of the good images both rows hold
                saved = np.load(out / f"{image}.npy")
                made = _part(image.split("@")[0]) + np.linspace(0, 1, 32, dtype=np.float32)[None] * row_id
                np.testing.assert_allclose(saved, np.broadcast_to(made, saved.shape), rtol=0, atol=1e-6)
    # scoring the saved maps again with their image scores reproduces every row's image metrics
    assert main(["evaluate-maps", "--maps", str(out), "--image-scores", str(out / IMAGE_SCORES_FILE),
                 "--output", str(tmp_path / "again.json")]) == 0  # fmt: skip
    again_record = json.loads((tmp_path / "again.json").read_text())
    assert not any("several categories hold" in n for n in again_record["notes"])  # each row's own maps
    again = again_record["per_category"]
    for category, metrics in module.test_results.per_category.items():
        for metric in ("image_auroc", "image_ap"):
            assert again[category][metric] == pytest.approx(metrics[metric], abs=1e-9)


def test_maps_of_a_run_over_some_rows_are_scored_without_a_note_or_the_rows_it_did_not_evaluate(tmp_path):
    """A run over one row of each object (``categories``) saves the good images' maps once, under their
    plain names: evaluate-maps (its categories from dataset.json) scores those rows, reproduces the run, and
    says nothing about maps shared by rows (each map is its row's own)."""
    root = write_mvtec_loco(tmp_path / "loco", n_test=3)
    module = _PerImage()
    out = tmp_path / "maps"
    rows = ["breakfast_box_logical", "pushpins_structural"]
    cfg = DataConfig(name="mvtec_loco", root=str(root), num_workers=0, eval_batch_size=4, categories=rows)
    datamodule = AnomalyDataModule(cfg, image_size=32)
    quiet_trainer(callbacks=[MapWriter(out)]).test(module, datamodule=datamodule)
    assert (out / "breakfast_box/test/good/000.npy").is_file()  # one row holds it: the plain name
    for extra in ([], ["--categories", *rows]):
        assert main(["evaluate-maps", "--maps", str(out), "--image-scores", str(out / IMAGE_SCORES_FILE),
                     "--output", str(tmp_path / "again.json"), *extra]) == 0  # fmt: skip
        again = json.loads((tmp_path / "again.json").read_text())
        assert not any("several categories hold" in n for n in again["notes"]), extra
        assert list(again["per_category"]) == rows
        for category, metrics in module.test_results.per_category.items():
            for metric in ("image_auroc", "image_ap"):  # (pixel metrics: at the masks' own size)
                assert again["per_category"][category][metric] == pytest.approx(metrics[metric], abs=1e-9)
