"""End-to-end `zsad test` of every AnoVL / dual-image ablation config (tiny CLIP, synthetic target):
training-free, so no checkpoint; each run writes results. The ablations whose method settings are the
methods' defaults (dual_image_full, anovl_mvtec) are not run here: tests/test_every_method.py runs them."""

from __future__ import annotations

import json

import pytest
from dual_image_support import single_thread  # noqa: F401 - a fixture

from pipelines.cli import main
from pipelines.config import compose, to_object

CONFIGS = [
    "dual_image_text_only",
    "dual_image_visual",
    "dual_image_tta",
    "dual_image_full",
    "dual_image_full_perlin",
    "dual_image_k1",
    "dual_image_k2",
    "dual_image_k4",
    "dual_image_kall",
    "anovl_mvtec",
]
ABLATIONS = [name for name in CONFIGS if name not in ("dual_image_full", "anovl_mvtec")]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def target_yaml(synthetic_pair, tmp_path_factory):
    path = tmp_path_factory.mktemp("dual_image_data") / "tgt.yaml"
    path.write_text(f"name: synthetic\nroot: {synthetic_pair[1]}\neval_batch_size: 7\nnum_workers: 0\n")
    return path


def _overrides(name: str, target_yaml, run_dir) -> list[str]:
    tiny = "method=anovl_tiny" if name.startswith("anovl") else "method=dual_image_tiny"
    return [
        tiny,
        f"targets=[{target_yaml}]",
        "logger.wandb.mode=disabled",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        f"run_dir={run_dir}",
    ]


def test_ablation_configs_keep_their_switches(target_yaml, tmp_path):
    """The tiny method swaps the backbone only: each experiment's own switches survive the override."""
    got = {name: to_object(compose(name, _overrides(name, target_yaml, tmp_path))).method for name in CONFIGS}
    assert not got["dual_image_text_only"].visual.enabled and not got["dual_image_text_only"].tta.enabled
    assert got["dual_image_visual"].visual.enabled and not got["dual_image_visual"].tta.enabled
    assert got["dual_image_tta"].tta.enabled and not got["dual_image_tta"].visual.enabled
    assert got["dual_image_full"].visual.enabled and got["dual_image_full"].tta.enabled
    assert got["dual_image_full_perlin"].tta.image_anomalies
    assert [got[f"dual_image_k{k}"].visual.k for k in (1, 2, 4)] == [1, 2, 4]
    assert (
        got["dual_image_kall"].visual.k == -1 and got["dual_image_kall"].visual.aggregate == "interval_mean"
    )
    assert all(m.backbone.name == "zsad-tiny-vit" for m in got.values())
    full = to_object(compose("dual_image_full", ["data_root=/nowhere"])).method
    assert (
        full.backbone.name == "ViT-B-16-plus-240"
        and full.backbone.pretrained == "laion400m_e32"
        and full.backbone.image_size == 240
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ABLATIONS)
def test_zsad_test_without_checkpoint_writes_results(name, target_yaml, tmp_path):
    run_dir = tmp_path / name
    assert main(["test", name, *_overrides(name, target_yaml, run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert (
        results["method"] == ("anovl" if name.startswith("anovl") else "dual_image")
        and results["checkpoint"] is None
    )
    target = results["targets"]["synthetic"]
    assert set(target["categories"]) == {"ring", "cells"}
    for metrics in target["categories"].values():
        for key in ("image_auroc", "image_ap", "pixel_auroc"):
            assert 0.0 <= metrics[key] <= 1.0
    assert (run_dir / "results.csv").is_file()
