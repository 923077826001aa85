"""Bayes-PFL's peak GPU memory when training at the authors' batch size, estimated on a CPU (no GPU needed).

    python benchmarks/memory_bayes_pfl.py [--batch-size 32] [--image-size 518]

As benchmarks/memory_vcp_clip.py: parameters are counted on the real architecture (ViT-L-14-336, the vision
tower on the meta device); the activations the trainable part keeps for the backward pass are *measured*
(``torch.autograd.graph.saved_tensors_hooks``) on one image with random features at full resolution, in
float32 as the authors train (no autocast in their train.py): the 2 x 3 prompts through the 12 text blocks,
the flows, RCA and the maps of the batch's prompt in every layer at 518 x 518, focal + Dice, KL, orthogonality.
They scale linearly with the batch. The frozen encoder runs without gradients; its transient peak is bounded
per block (``14 * B * L * width`` float32 elements), plus the four returned token layers; a fixed allowance
covers the CUDA context and the allocator.

Estimate = frozen weights + trainable weights x 4 (weights, gradients, Adam's two moments) +
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

from lightning_modules.bayes_pfl import BayesPFL, BayesPFLConfig  # noqa: E402

CARD_GIB = 11


def saved_per_image(model: BayesPFL, size: int) -> int:
    """Bytes the trainable part saves for backward on one image (each storage counted once)."""
    grid = size // model.vision.visual.conv1.kernel_size[0]
    features = {
        "image": torch.randn(1, model.dim),
        "patches": torch.randn(1, len(model.cfg.feature_layers), grid * grid, model.vision.width),
    }

    model.train()
    record: dict[int, int] = {}
    with saved_bytes(record, fused_attention=False):
        eps = model.training_draws(1, torch.device("cpu"))
        output = model.scores_from_draws(features, ["bottle"], (size, size), 0, 1, eps)
        loss = model.loss(output, torch.ones(1, dtype=torch.long), (torch.rand(1, size, size) > 0.9).float())[
            "loss"
        ]
    del loss, output
    return sum(record.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="train.sh: 32")
    parser.add_argument("--image-size", type=int, default=518)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    cfg = BayesPFLConfig()
    cfg.backbone.image_size = args.image_size
    cfg.backbone.pretrained = None
    model = BayesPFL(
        cfg, clip_with_text_tower_only(cfg.backbone.name), open_clip.get_tokenizer(cfg.backbone.name)
    )
    b, size = args.batch_size, args.image_size
    frozen = sum(p.numel() for p in model.clip.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    width = model.vision.width
    tokens = (size // model.vision.visual.conv1.kernel_size[0]) ** 2 + 1
    encoder = frozen_block_transient_bytes(b, tokens, width, 4)
    features = len(cfg.feature_layers) * b * tokens * width * 4
    fixed = 4 * frozen + 16 * trainable + CONTEXT_ALLOWANCE_GIB * GIB
    print(
        f"Bayes-PFL memory estimate: {cfg.backbone.name} at {size} px, batch {b}, float32; "
        f"{frozen / 1e6:.0f} M frozen + {trainable / 1e6:.2f} M trainable parameters"
    )
    rows = {}
    for label, checkpointing in (("as the authors", False), ("method.checkpoint_text_blocks=true", True)):
        model.text.checkpoint_blocks = checkpointing
        per_image = saved_per_image(model, size)
        total = fixed + max(encoder, features + b * per_image)
        most = int((CARD_GIB * GIB - fixed) // (per_image + features / b))
        rows[label] = {
            "saved_activations_per_image_gib": per_image / GIB,
            "estimated_peak_gib": total / GIB,
            "images_per_step_on_11gb": most,
        }
        print(
            f"  {label:<36} saved for backward {per_image / 2**20:.0f} MiB/image, peak ~{total / GIB:.1f} GiB "
            f"(encoder transient {encoder / GIB:.1f} GiB); fits {CARD_GIB} GB: {total / GIB <= CARD_GIB} "
            f"(~{most} images per step do)"
        )
    print(
        json.dumps(
            {
                "method": "bayes_pfl",
                "batch_size": b,
                "image_size": size,
                "frozen_params": frozen,
                "trainable_params": trainable,
                "encoder_transient_gib": encoder / GIB,
                "estimates": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
