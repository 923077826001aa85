"""End-to-end runs of the four CMG ablation configs on synthetic data, and `zsad report --baseline` on them."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.cli import main
from pipelines.report import build_report

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
def test_the_report_compares_the_ablation_against_the_baseline(ablation_runs, tmp_path):
    runs, _ = ablation_runs
    folders = [str(runs[name]) for name in ABLATIONS]
    report = build_report(
        folders, out=str(tmp_path / "report"), wandb_mode="disabled", baseline="cmg_baseline"
    )
    means = {
        name: json.loads((runs[name] / "results.json").read_text())["targets"]["synthetic"]["mean"]
        for name in ABLATIONS
    }
    line = next(r for r in report.markdown.splitlines() if r.startswith("| synthetic | "))
    baseline, full = means["cmg_baseline"]["image_auroc"], means["cmg_full"]["image_auroc"]
    assert f"{100 * baseline:.1f}, " in line  # the baseline's own cell: no difference
    assert f"{100 * full:.1f} ({100 * (full - baseline):+.1f})" in line
    assert report.n_runs == len(ABLATIONS) and report.warnings == []
