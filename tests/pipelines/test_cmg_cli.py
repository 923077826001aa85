"""End-to-end runs of the four CMG ablation configs on synthetic data, and the ablation table."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_modules.cmg.report import ablation_table
from pipelines.cli import main

ABLATIONS = ("cmg_baseline", "cmg_cmer", "cmg_cmle", "cmg_full")


@pytest.fixture(scope="module")
def ablation_runs(tmp_path_factory, synthetic_pair):
    """``zsad run cmg_*`` with the tiny CLIP, trained on the synthetic source's train split, tested on it."""
    source, _ = synthetic_pair
    base = tmp_path_factory.mktemp("cmg_cli")
    data = base / "src.yaml"
    data.write_text(f"name: synthetic\nroot: {source}\nbatch_size: 4\neval_batch_size: 5\nnum_workers: 0\n")
    common = [
        "method=cmg_tiny", f"source={data}", f"targets=[{data}]", "logger.wandb.mode=disabled",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1",
    ]  # fmt: skip
    runs = {}
    for name in ABLATIONS:
        assert main(["run", name, *common, f"run_dir={base / name}"]) == 0
        runs[name] = base / name
    return runs, common


@pytest.mark.slow
def test_each_ablation_config_trains_on_normal_images_and_writes_results(ablation_runs):
    runs, _ = ablation_runs
    for name, run_dir in runs.items():
        results = json.loads((run_dir / "results.json").read_text())
        assert results["experiment"] == name and results["method"] == "cmg"
        target = results["targets"]["synthetic"]
        assert set(target["categories"]) == {"disc", "weave"}
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= target["mean"][key] <= 1.0
        config = (run_dir / "config.yaml").read_text()
        assert "train_split: train" in config
        state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        assert state and all(k.startswith("model.autoencoder.") for k in state)
        has_cache = (run_dir / "cache" / "cmer").is_dir()
        assert has_cache == (name in ("cmg_cmer", "cmg_full"))


@pytest.mark.slow
def test_ablation_table_compares_the_runs_against_the_baseline(ablation_runs):
    runs, _ = ablation_runs
    table = ablation_table([runs[name] for name in ABLATIONS]).splitlines()
    assert table[0].startswith("| run | target | img AUROC |") and len(table) == 2 + len(ABLATIONS)
    baseline = json.loads((runs["cmg_baseline"] / "results.json").read_text())["targets"]["synthetic"]["mean"]
    full = json.loads((runs["cmg_full"] / "results.json").read_text())["targets"]["synthetic"]["mean"]
    assert (
        table[2].startswith("| cmg_baseline | synthetic | ")
        and f"{100 * baseline['image_auroc']:.1f} |" in table[2]
    )
    delta = 100 * (full["image_auroc"] - baseline["image_auroc"])
    assert (
        table[5].startswith("| cmg_full | synthetic | ")
        and f"{100 * full['image_auroc']:.1f} ({delta:+.1f})" in table[5]
    )


def test_ablation_table_marks_missing_metrics(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    mean = {"image_auroc": 0.5, "pixel_auroc": None}
    (run / "results.json").write_text(json.dumps({"experiment": "x", "targets": {"btad": {"mean": mean}}}))
    table = ablation_table([run], metrics=("image_auroc", "pixel_auroc"))
    assert table.splitlines()[2] == "| x | btad | 50.0 | - |"
