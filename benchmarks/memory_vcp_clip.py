"""VCP-CLIP's peak GPU memory at the authors' batch size, estimated on a CPU (no GPU needed).

    python benchmarks/memory_vcp_clip.py [--batch-size 32] [--image-size 518]

Parameters are counted on the real architecture (ViT-L-14-336, built on the meta device); the activations
the trainable part keeps for the backward pass are *measured*: the trainable part (texts through the 12
text blocks, post-VCP, both map kinds of every layer at full resolution, focal + Dice) runs on the CPU for
one image with random features, and ``torch.autograd.graph.saved_tensors_hooks`` adds up every tensor it
saves (in float32, and under CPU autocast to bfloat16 as a stand-in for the authors' CUDA fp16 autocast:
same 2-byte sizes, similar op lists). They scale linearly with the batch. The frozen encoder runs without
gradients; its transient peak is bounded analytically per block (input, LayerNorm, qkv, attention output,
MLP hidden and its activation: ``14 * B * L * width`` elements in the autocast dtype, fused attention
without an ``L x L`` matrix), plus the four returned token layers. Everything else (CUDA context, allocator
fragmentation) is a fixed allowance.

Estimate = frozen weights (fp32) + trainable weights x 4 (weights, gradients, Adam's two moments) +
max(encoder transient, features + saved activations) + allowance. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import open_clip  # noqa: E402
import torch  # noqa: E402
from perf_support import (  # noqa: E402
    CONTEXT_ALLOWANCE_GIB,
    GIB,
    clip_with_text_tower_only,
    frozen_block_transient_bytes,
    saved_bytes,
)

from lightning_modules.vcp_clip import VCPCLIP, VCPCLIPConfig  # noqa: E402


def build(cfg: VCPCLIPConfig) -> VCPCLIP:
    """The real architecture: the vision tower on the meta device (counted, never run), the text tower
    materialised on the CPU with random values (it runs in the trainable graph)."""
    clip = clip_with_text_tower_only(cfg.backbone.name)
    return VCPCLIP(cfg, clip, open_clip.get_tokenizer(cfg.backbone.name))


def saved_per_image(model: VCPCLIP, size: int, autocast: bool) -> int:
    """Bytes the trainable part saves for backward on one image (each storage counted once)."""
    grid = size // model.vision.visual.conv1.kernel_size[0]
    features = {"image_embedding": torch.randn(1, model.vision.output_dim)} | {
        f"tokens_{layer}": torch.randn(1, grid * grid, model.vision.width)
        for layer in model.cfg.feature_layers
    }

    model.train()
    context = (
        torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    )
    record: dict[int, int] = {}
    with saved_bytes(record, fused_attention=False), context:
        output = model.scores(features, (size, size))
        loss = model.loss(output, (torch.rand(1, size, size) > 0.9).float())
    del loss, output
    return sum(record.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="train.sh: 32")
    parser.add_argument("--image-size", type=int, default=518)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    cfg = VCPCLIPConfig()
    cfg.backbone.image_size = args.image_size
    cfg.backbone.pretrained = None
    model = build(cfg)
    b, size = args.batch_size, args.image_size
    frozen = sum(p.numel() for p in model.clip.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    width = model.vision.width
    tokens = (size // model.vision.visual.conv1.kernel_size[0]) ** 2 + 1
    rows = {}
    for label, autocast, element in (("fp32", False, 4), ("fp16 autocast (the authors')", True, 2)):
        per_image = saved_per_image(model, size, autocast)
        encoder = frozen_block_transient_bytes(b, tokens, width, element)
        features = len(cfg.feature_layers) * b * tokens * width * element
        total = (
            4 * frozen + 16 * trainable + max(encoder, features + b * per_image) + CONTEXT_ALLOWANCE_GIB * GIB
        )
        rows[label] = {
            "saved_activations_per_image_gib": per_image / GIB,
            "encoder_transient_gib": encoder / GIB,
            "estimated_peak_gib": total / GIB,
        }
    print(
        f"VCP-CLIP memory estimate: {cfg.backbone.name} at {size} px, batch {b}; "
        f"{frozen / 1e6:.0f} M frozen + {trainable / 1e6:.2f} M trainable parameters"
    )
    for label, row in rows.items():
        print(
            f"  {label:<30} saved for backward {row['saved_activations_per_image_gib'] * 1024:.0f} MiB/image, "
            f"encoder transient {row['encoder_transient_gib']:.1f} GiB, peak ~{row['estimated_peak_gib']:.1f} GiB"
        )
    fits = {label: row["estimated_peak_gib"] <= 11 for label, row in rows.items()}
    print(f"  fits an 11 GB card: {fits}")
    print(
        json.dumps(
            {
                "method": "vcp_clip",
                "batch_size": b,
                "image_size": size,
                "frozen_params": frozen,
                "trainable_params": trainable,
                "estimates": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
