"""Helpers for the baselines' tests (CLIP, CLIP-AC, WinCLIP, VAND, CoOp): experiments on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_modules.clip.config import BackboneConfig
from lightning_modules.clip.factory import TINY_MODEL

FAST = ["logger.wandb.mode=disabled", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def tiny_backbone(image_size: int = 32) -> BackboneConfig:
    return BackboneConfig(name=TINY_MODEL, pretrained=None, image_size=image_size)


def write_method_experiment(tmp_path: Path, method: str, source: Path | None, target: Path) -> Path:
    """An experiment YAML: ``method`` (a configs/method name) on the synthetic source/target pair."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    roots = {"tgt": target} if source is None else {"src": source, "tgt": target}
    for name, root in roots.items():
        (data / f"{name}.yaml").write_text(
            f"name: synthetic\nroot: {root}\nbatch_size: 4\neval_batch_size: 5\nnum_workers: 0\n"
        )
    source_line = "" if source is None else f"  source: {data / 'src.yaml'}\n"
    experiment = tmp_path / f"{method}.yaml"
    experiment.write_text(
        f"defaults:\n  method: {method}\n{source_line}  targets: [{data / 'tgt.yaml'}]\n"
        f"name: e2e_{method}\noutput_dir: {tmp_path / 'runs'}\ntrainer: {{accelerator: cpu, devices: '1', log_every_n_steps: 1}}\n"
    )
    return experiment


def check_results(run_dir: Path, categories: set[str]) -> dict[str, Any]:
    """results.json holds every target category with image and pixel metrics in [0, 1]."""
    results = json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]
    assert set(results["categories"]) == categories
    for metrics in results["categories"].values():
        for key in ("image_auroc", "image_ap", "pixel_auroc"):
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    return results


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Autouse in the modules that import it: the tiny models' ops are so small that on a shared 2-core
    CPU a second intra-op thread only adds contention (runs get several times slower); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_dino_run(
    tmp_path: Path, run_dir: Path, method: str, n_train: int, *overrides: str
) -> dict[str, Any]:
    """``zsad run`` of configs/method/``method``.yaml (an AnomalyDINO setting) on the tiny random-weight DINOv2
    at 42 px, maps saved, over a vivid synthetic target of 40 px files (ring and cells: ``n_train`` normal
    training images, 2 good and 1 per defect kind in test; written once per ``tmp_path``); its results.json."""
    from datamodules.synthetic import generate_synthetic_dataset
    from pipelines.cli import main

    experiment = tmp_path / f"{method}.yaml"
    if not experiment.is_file():
        kwargs = dict(seed=3, image_size=40, n_train=n_train, n_test_good=2, n_test_defect_per_kind=1)
        target = generate_synthetic_dataset(
            tmp_path / "d", style="vivid", categories=["ring", "cells"], **kwargs
        )
        (tmp_path / "tgt.yaml").write_text(f"name: synthetic\nroot: {target.root}\nnum_workers: 0\n")
        experiment.write_text(
            f"defaults:\n  method: {method}\n  targets: [{tmp_path / 'tgt.yaml'}]\n"
            f"name: {method}\noutput_dir: {tmp_path / 'runs'}\ntrainer: {{accelerator: cpu, devices: '1'}}\n"
        )
    args = [
        "run", str(experiment), "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false",
        "method.backbone.name=zsad-tiny-dinov2", "method.backbone.pretrained=null", "method.backbone.image_size=42",
        "eval.save_maps=true", f"run_dir={run_dir}", *overrides,
    ]  # fmt: skip
    assert main(args) == 0
    return json.loads((run_dir / "results.json").read_text())
