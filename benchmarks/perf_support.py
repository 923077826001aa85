"""Shared pieces of the speed benchmarks (train_epoch.py, inference.py, end_to_end.py): a synthetic
dataset, the tiny random-weight AnomalyCLIP, and a description of the machine for the printed reports."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from datamodules.synthetic import STYLES, generate_synthetic_dataset  # noqa: E402
from lightning_modules.anomalyclip import AnomalyCLIPConfig  # noqa: E402
from lightning_modules.clip.config import BackboneConfig  # noqa: E402
from lightning_modules.clip.factory import TINY_MODEL  # noqa: E402


def synthetic_source(
    out: Path, categories: int, per_category: int, file_size: int, seed: int = 0, copies: int = 1
) -> tuple[Path, int]:
    """A synthetic MVTec-layout dataset whose test split has ``categories * per_category * copies`` images
    (half good, half defective over the four defect kinds) of ``file_size`` px. ``copies > 1`` adds
    byte-identical copies of each test image (and mask) under new names: as many files to decode and
    encode at a fraction of the rendering time, which is all a speed measurement needs. Returns (root, n)."""
    available = list(STYLES["industrial"].categories)
    if not 1 <= categories <= len(available):
        raise ValueError(
            f"the synthetic 'industrial' style has {len(available)} categories; asked for {categories}"
        )
    names = available[:categories]
    per_kind = max(1, per_category // 8)
    good = per_category - 4 * per_kind
    summary = generate_synthetic_dataset(
        out,
        seed=seed,
        style="industrial",
        categories=names,
        image_size=file_size,
        n_train=1,
        n_test_good=good,
        n_test_defect_per_kind=per_kind,
        overwrite=True,
    )
    for image in sorted(summary.root.glob("*/test/*/*.png")) if copies > 1 else []:
        mask = image.parents[2] / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
        for copy in range(1, copies):
            shutil.copyfile(image, image.with_name(f"{image.stem}c{copy}.png"))
            if mask.is_file():
                shutil.copyfile(mask, mask.with_name(f"{image.stem}c{copy}_mask.png"))
    return summary.root, categories * (good + 4 * per_kind) * copies


def tiny_anomalyclip(image_size: int, **overrides) -> AnomalyCLIPConfig:
    """AnomalyCLIP on the tiny random-weight ViT (6 blocks, width 64, patch 8), DPAM on blocks 2..6."""
    cfg = AnomalyCLIPConfig(
        backbone=BackboneConfig(name=TINY_MODEL, pretrained=None, image_size=image_size),
        dpam_start_block=2,
        map_layers=[6],
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def add_model_arguments(parser: argparse.ArgumentParser, precisions: list[str]) -> None:
    """The model, device and threading options shared by inference.py and end_to_end.py."""
    parser.add_argument("--backbone", default="zsad-tiny-vit")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dpam-start", type=int, default=2, help="first V-V block (tiny: 2; ViT-L-14: 6)")
    parser.add_argument("--map-layers", default="6", help="comma list (tiny: 6; ViT-L-14: 24)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=precisions)
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=["highest", "high", "medium"],
        help="torch.set_float32_matmul_precision (high: TF32 tensor cores on GPUs), as trainer.float32_matmul_precision",
    )
    parser.add_argument("--threads", type=int, default=None)


def model_from_arguments(args: argparse.Namespace) -> tuple[AnomalyCLIPConfig, torch.device]:
    """Apply ``--threads`` and build the AnomalyCLIP config and device that ``add_model_arguments`` describe."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    layers = [int(x) for x in args.map_layers.split(",")]
    cfg = tiny_anomalyclip(args.image_size, dpam_start_block=args.dpam_start, map_layers=layers)
    cfg.backbone.name = args.backbone
    return cfg, torch.device(args.device)


def machine() -> str:
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or platform.machine()
    )
    return (
        f"{device}; torch {torch.__version__}; {torch.get_num_threads()} torch threads; "
        f"{os.cpu_count()} CPUs visible; python {platform.python_version()}"
    )


def clip_with_text_tower_only(name: str):
    """An open_clip model of architecture ``name`` whose vision tower stays on the meta device (counted, never
    run) and whose text tower is materialised on the CPU with random values (it runs in a trainable graph):
    what the memory estimates (benchmarks/memory_*.py) measure the trainable part of a method on."""
    import open_clip

    clip = open_clip.create_model(name, pretrained=None, device="meta")
    for part in ("transformer", "token_embedding", "ln_final"):
        getattr(clip, part).to_empty(device="cpu")
    for part in ("positional_embedding", "text_projection"):
        setattr(clip, part, torch.nn.Parameter(torch.randn_like(getattr(clip, part), device="cpu")))
    for p in [
        *clip.transformer.parameters(),
        *clip.token_embedding.parameters(),
        *clip.ln_final.parameters(),
    ]:
        p.data.normal_(std=0.02)
    clip.attn_mask = torch.empty(77, 77).fill_(float("-inf")).triu_(1)
    return clip


GIB = 2**30
CONTEXT_ALLOWANCE_GIB = (
    0.75  # the memory estimates' allowance: CUDA context, cuBLAS workspaces, allocator slack
)


def frozen_block_transient_bytes(batch: int, tokens: int, width: int, element_bytes: int) -> int:
    """A frozen (no-gradient) ViT block's peak on ``batch`` sequences of ``tokens``: input, LayerNorm, qkv,
    attention output, MLP hidden and its activation, ``14 * B * L * width`` elements, fused attention
    without an ``L x L`` matrix (the memory estimates' bound for a frozen encoder pass)."""
    return 14 * batch * tokens * width * element_bytes


def _remember(record: dict[int, int], tensor: torch.Tensor) -> None:
    storage = tensor.untyped_storage()
    record[storage._cdata] = max(record.get(storage._cdata, 0), storage.nbytes())


@contextlib.contextmanager
def saved_bytes(record: dict[int, int], fused_attention: bool):
    """Record the bytes of every tensor autograd saves (one entry per storage). ``fused_attention``: count
    attention as a fused GPU kernel keeps it (flash / memory-efficient: q, k, v, the output and the row
    log-sum-exp), as zsad's open_clip blocks run on a GPU; else as the math path that the meta device runs
    and that the authors' blocks need anyway (``nn.MultiheadAttention(need_weights=True)`` materialises the
    L x L attention of every head)."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    sequential = 0  # a unique key for the log-sum-exp rows, which have no tensor here
    # what a fused kernel would keep, kept here too: a freed q, k or v could hand its storage's address (the
    # record's key) to a later tensor, which would then be counted as the same storage
    kept: list[torch.Tensor] = []

    def fused(query, key, value, *args, **kwargs):
        nonlocal sequential
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))):
            return original(query, key, value, *args, **kwargs)  # nothing is kept for a backward pass
        out = query.clone()  # shape and autograd of the real output (q, k, v, out: same shapes here)
        for tensor in (query, key, value, out):
            _remember(record, tensor)
            kept.append(tensor)
        sequential += 1
        record[-sequential] = query.shape[:-1].numel() * 4  # float32 log-sum-exp per query row
        return out

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        _remember(record, tensor)
        return tensor

    if fused_attention:
        F.scaled_dot_product_attention = fused
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
    finally:
        F.scaled_dot_product_attention = original


def fastest(function: Callable[[], object], repeats: int) -> float:
    """The shortest of ``repeats`` wall-clock times of ``function()`` (seconds): the run least disturbed by
    the rest of a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def speed_rounds() -> int:
    """How many alternating rounds the speed scripts run (``ZSAD_SPEED_ROUNDS``, default 2)."""
    return int(os.environ.get("ZSAD_SPEED_ROUNDS", "2"))


def alternating_fastest(
    authors: Callable[[], dict[str, float]], zsad: Callable[[], dict[str, float]], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Each side's fastest time per key over ``rounds`` rounds in which the two sides take turns: the
    rounds least disturbed by the rest of a shared machine, whose load varies."""
    best: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for _ in range(rounds):
        for side, times in zip(best, (authors, zsad), strict=True):
            for key, value in times().items():
                side[key] = min(side.get(key, float("inf")), float(value))
    return best


def print_speedups(
    method: str,
    rows: tuple[tuple[str, str], ...],
    theirs: dict[str, float],
    ours: dict[str, float],
    reference: str = "authors",
) -> None:
    """One line per ``(key, label)`` of ``rows`` (their seconds, zsad's, the ratio), then the JSON line;
    ``reference``: whose code "theirs" is (the authors', or anomalib's where that is the reference)."""
    ratios = {}
    width = max(len(label) for _, label in rows)
    for name, label in rows:
        key = name.removesuffix("_s")
        ratios[key] = theirs[name] / ours[name]
        print(
            f"  {label:<{width}} {reference} {theirs[name]:.3f} s, zsad {ours[name]:.3f} s: {ratios[key]:.2f}x"
        )
    print(json.dumps({"method": method, f"{reference}_s": theirs, "zsad_s": ours, "speedup": ratios}))
