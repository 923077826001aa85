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


def capture_modules(monkeypatch) -> list[Any]:
    """Record every module the runner builds, with a copy of its frozen CLIP weights taken before training."""
    from pipelines import runner

    built: list[Any] = []
    original = runner.build_module

    def build(cfg, spec):
        module = original(cfg, spec)
        module.frozen_before = {k: v.clone() for k, v in module.model.clip.state_dict().items()}
        module.trainable_before = {
            n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad
        }
        built.append(module)
        return module

    monkeypatch.setattr(runner, "build_module", build)
    return built


def assert_only_trainable_parts_changed(module: Any) -> None:
    after = module.model.clip.state_dict()
    assert after.keys() == module.frozen_before.keys()
    for key, before in module.frozen_before.items():
        assert torch.equal(after[key], before), f"frozen CLIP weight {key} changed"
    assert not any(p.requires_grad for p in module.model.clip.parameters())
    trained = dict(module.named_parameters())
    assert module.trainable_before, "nothing trainable"
    assert any(not torch.equal(trained[n], before) for n, before in module.trainable_before.items())


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
