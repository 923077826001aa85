"""Inference speed pieces: the text embeddings computed once per evaluation, mixed precision on CPU, and
smoke runs of the speed benchmarks (benchmarks/train_epoch.py, inference.py, end_to_end.py, gpu_suite.sh)
and the FLOP count (benchmarks/flops.py) against a hand-written formula."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from baselines_support import one_torch_thread  # noqa: F401 - autouse fixture

from lightning_modules.anomalyclip.model import AnomalyCLIP
from lightning_modules.clip.config import BackboneConfig
from tests_support import tiny_anomalyclip_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(tiny_clip) -> AnomalyCLIP:
    clip_model, tokenizer = tiny_clip
    return AnomalyCLIP(tiny_anomalyclip_config(), clip_model, tokenizer).eval()


def test_inference_text_is_computed_once_and_follows_the_prompts(model, monkeypatch):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fresh = model(images, size=(32, 32))
    calls = []
    original = model.text_embeddings
    monkeypatch.setattr(model, "text_embeddings", lambda: calls.append(1) or original())
    scores, _ = model.predict(images, size=(32, 32))
    model.predict(images, size=(32, 32))
    assert len(calls) == 1
    torch.testing.assert_close(scores, fresh.image_scores, atol=0, rtol=0)

    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.1)  # a training step changes the prompts
    model.loss(model(images, size=(32, 32)), torch.tensor([0, 1, 0]), None)["loss"].backward()
    optimizer.step()
    after_step, _ = model.predict(images, size=(32, 32))
    assert len(calls) == 3 and not torch.allclose(after_step, scores)  # 1 + the forward above + the refresh

    model.load_state_dict(
        {k: v.clone() for k, v in model.state_dict().items()}
        | {"prompts.normal_context": torch.zeros_like(model.prompts.normal_context)}
    )
    model.predict(images, size=(32, 32))
    assert len(calls) == 4
    torch.testing.assert_close(model.inference_text_embeddings(), original())


def test_bf16_autocast_inference_on_cpu_is_close_to_fp32(model):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    scores32, maps32 = model.predict(images, size=(32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores16, maps16 = model.predict(images, size=(32, 32))
    assert scores16.shape == scores32.shape and maps16.shape == maps32.shape
    assert (scores16.float() - scores32).abs().max() < 0.1 and (maps16.float() - maps32).abs().max() < 0.1


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=500,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


#: 8 rendered 64 px images per category, encoded at 32 px on one thread (train_epoch.py, end_to_end.py).
SMALL_RENDERED_RUN = (
    "--images-per-category",
    "8",
    "--file-size",
    "64",
    "--image-size",
    "32",
    "--threads",
    "1",
)


@pytest.mark.slow
def test_train_epoch_benchmark_prints_the_cache_ratio():
    out = _run("train_epoch.py", *SMALL_RENDERED_RUN, "--epochs", "1")
    assert "ratio per epoch:" in out and "max |cached - uncached|" in out


@pytest.mark.slow
def test_inference_benchmark_prints_rates_by_batch_size():
    out = _run(
        "inference.py", "--image-size", "32", "--batch-sizes", "1,4", "--images", "8", "--threads", "1"
    )
    assert "vs batch-1 loop" in out and "best: batch" in out


@pytest.mark.slow
def test_end_to_end_benchmark_prints_the_time_split():
    out = _run("end_to_end.py", *SMALL_RENDERED_RUN)
    for phase in ("data", "encoder", "maps", "metrics"):
        assert phase in out


@pytest.mark.slow
def test_gpu_suite_runs_every_step_in_smoke_mode(tmp_path):
    """The GPU suite (run on lent GPU machines) is kept working here: SMOKE=1 runs its steps on the CPU."""
    env = os.environ | {"SMOKE": "1", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")],
        capture_output=True,
        text=True,
        timeout=1800,  # a safety net for a hung step, not a speed check (~2-8 min, longer on a loaded machine)
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = (
        "cuda_tests",
        "flops",
        "inference_fp32",
        "inference_tf32",
        "inference_bf16",
        "end_to_end_bf16",
        "train_bf16",
        "scale_eval_cuda",
    )
    for step in steps:
        log = (tmp_path / f"{step}.txt").read_text()
        assert log.rstrip().endswith(f"== {step} exit 0"), log[-2000:]
    assert "whole cached training:" in (tmp_path / "train_bf16.txt").read_text()
    assert "scores with float32 matmul high vs highest" in (tmp_path / "inference_tf32.txt").read_text()


def vit_encoder_flops(
    image: int, patch: int, width: int, blocks: int, vv_blocks: int, embed: int, mlp_ratio: int = 4
) -> int:
    """Matrix-product FLOPs of a CLIP ViT with DPAM, written out by hand: the reference for flops.py.

    A block does q, k, v, out and two MLP products (``2 N d^2 (3 + 1 + 2 mlp_ratio)``) and attention
    ``Q K^T`` and ``A V`` (``4 N^2 d``); a DPAM block adds the V-V attention (``4 N^2 d``) and its out
    projection (``2 N d^2``). Then the patch convolution and the class and patch projections to ``embed``.
    """
    patches = (image // patch) ** 2
    tokens = patches + 1
    block = 2 * tokens * width * width * (4 + 2 * mlp_ratio) + 4 * tokens**2 * width
    vv = 2 * tokens * width * width + 4 * tokens**2 * width
    convolution = 2 * patches * 3 * patch * patch * width
    projections = 2 * (patches + 1) * width * embed
    return blocks * block + vv_blocks * vv + convolution + projections


def test_flop_count_matches_the_vit_formula_and_the_cache_removes_the_encoder(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    flops_script = importlib.import_module("flops")
    model = AnomalyCLIP(tiny_anomalyclip_config(backbone=BackboneConfig("zsad-tiny-vit", None, 64)))
    flops = flops_script.anomalyclip_flops(model.eval().to("meta"), image_size=64, train_batch=4)
    # the tiny ViT: 6 blocks of width 64, patch 8, DPAM on blocks 2..6, 64-d embeddings
    assert flops["image encoder"] == vit_encoder_flops(64, 8, 64, blocks=6, vv_blocks=5, embed=64)
    assert flops["logits (class token and patches)"] == 2 * 65 * 64 * 2  # 65 embeddings x 2 text embeddings
    assert flops["training step, uncached (per image)"] == (
        flops["training step, cached (per image)"] + flops["image encoder"]
    )
    # a cached step runs the text encoder forward and backward (input gradients only: CLIP is frozen)
    assert (
        flops["text encoder (once per evaluation)"]
        < flops["training step, cached (per image)"] * 4
        < (3 * flops["text encoder (once per evaluation)"])
    )


@pytest.mark.slow
def test_flops_benchmark_prints_bounds_for_the_given_peaks():
    out = _run(
        "flops.py", "--backbone", "zsad-tiny-vit", "--image-size", "64", "--dpam-start", "2",
        "--map-layers", "6", "--peak", "one TFLOP/s=1",
    )  # fmt: skip
    assert "image encoder" in out and "less arithmetic" in out
    assert "at 1 TFLOP/s sustained (one TFLOP/s): at most" in out
