"""AA-CLIP's peak GPU memory in each training stage at the authors' batch sizes, estimated without a GPU.

    python benchmarks/memory_aa_clip.py [--text-batch-size 16] [--image-batch-size 2] [--image-size 518]

zsad's AA-CLIP on open_clip's ViT-L-14-336 (the authors' settings) is built on PyTorch's ``meta`` device
(shapes, no data) and one step of each stage runs there in float32, as the authors train (no autocast),
while ``perf_support.saved_bytes`` records every tensor autograd keeps for the backward pass: stage 1
(``text_stage_loss`` at batch 16: the text tower with its adapters for the batch's class, the maps at full
resolution, focal + Dice), stage 2 (``image_stage_loss`` at batch 2: the whole vision tower, whose first
blocks hold the adapters, four maps at full resolution, the image feature's cross-entropy). zsad's blocks run
attention as a fused GPU kernel keeps it; the authors' blocks call ``nn.MultiheadAttention`` with its default
``need_weights=True``, which keeps every L x L attention matrix (the same steps counted the math path's way).

Added: the frozen CLIP's weights; the adapters with their gradients and Adam's two moments (both stages'
optimizers); stage 1's frozen image pass (no gradient: its transient peak bounded by one block's ``14 * B *
L * width`` float32 elements plus the other of its two streams (surgery and plain), and the four feature
layers it returns). The authors' code holds two CLIPs (``train.py main`` builds the surgery CLIP beside the adapted
one and keeps it for the whole run) and leaves ``requires_grad`` on every CLIP weight (only the optimizers
are restricted), so each backward pass also fills a gradient for every weight of the tower it runs through,
kept from then on (they are never zeroed). The CUDA context and allocator slack are a fixed allowance. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from perf_support import (  # noqa: E402
    CONTEXT_ALLOWANCE_GIB,
    GIB,
    frozen_block_transient_bytes,
    saved_bytes,
)

CARD_GIB = 11


def build(image_size: int):
    import open_clip

    from lightning_modules.aa_clip import AAClip, AAClipConfig
    from lightning_modules.clip.factory import register_builtin_configs

    register_builtin_configs()
    cfg = AAClipConfig()
    cfg.backbone.pretrained, cfg.backbone.image_size = None, image_size
    with torch.device("meta"):
        clip = open_clip.create_model(cfg.backbone.name, pretrained=None, device="meta")
        model = AAClip(cfg, clip, open_clip.get_tokenizer(cfg.backbone.name))
    model.set_classes(["bottle"])
    return model


def stage_activations(model, stage: str, batch: int, size: int, fused_attention: bool) -> int:
    """Bytes one step of ``stage`` keeps for its backward pass (category ids stay on the CPU)."""
    images = torch.empty(batch, 3, size, size, device="meta")
    masks = torch.empty(batch, size, size, device="meta")
    ids = torch.zeros(batch, dtype=torch.long)
    record: dict[int, int] = {}
    if stage == "text":
        model.class_text = None
        with saved_bytes(record, fused_attention):
            model.text_stage_loss(images, masks, ids)
    else:
        with torch.no_grad():
            model.freeze_texts()
        labels = torch.zeros(batch, dtype=torch.long, device="meta")
        with saved_bytes(record, fused_attention):
            model.image_stage_loss(images, masks, labels, ids)
    return sum(record.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-batch-size", type=int, default=16, help="their --text_batch_size")
    parser.add_argument("--image-batch-size", type=int, default=2, help="their --image_batch_size")
    parser.add_argument("--image-size", type=int, default=518)
    args = parser.parse_args()
    size = args.image_size
    model = build(size)
    clip, vision = model.clip, model.vision
    frozen = sum(p.numel() for p in clip.parameters()) * 4
    text_tower = sum(p.numel() for n, p in clip.named_parameters() if not n.startswith("visual.")) * 4
    trainable = sum(p.numel() for p in model.adapters.parameters()) * 4
    tokens, width = vision.grid**2 + 1, vision.width
    allowance = CONTEXT_ALLOWANCE_GIB * GIB
    print(
        f"AA-CLIP training, {model.cfg.backbone.name} at {size} px, float32: {frozen / 4e6:.0f} M frozen, "
        f"{trainable / 4e6:.1f} M trainable parameters"
    )
    rows = {}
    for stage, batch in (("text", args.text_batch_size), ("image", args.image_batch_size)):
        ours = stage_activations(model, stage, batch, size, fused_attention=True)
        theirs = stage_activations(model, stage, batch, size, fused_attention=False)
        if stage == "text":  # the frozen image pass first, then the text side's graph
            layers = len(model.feature_layers) * batch * (tokens - 1) * model.clip.visual.output_dim * 4
            # a block's peak + the other stream
            transient = (
                frozen_block_transient_bytes(batch, tokens, width, 4) + batch * tokens * width * 4 + layers
            )
            ours, theirs = max(transient, layers + ours), max(transient, layers + theirs)
            their_grads = text_tower
        else:  # stage 1's text-tower gradients stay
            their_grads = frozen
        fixed = frozen + 4 * trainable + allowance
        their_fixed = 2 * frozen + 4 * trainable + their_grads + allowance
        rows[stage] = {
            "batch_size": batch,
            "zsad_gib": (fixed + ours) / GIB,
            "authors_gib": (their_fixed + theirs) / GIB,
        }
        print(
            f"  stage {1 if stage == 'text' else 2} ({stage} adapters, batch {batch:>2}): zsad ~"
            f"{rows[stage]['zsad_gib']:.1f} GiB, the authors' code ~{rows[stage]['authors_gib']:.1f} GiB "
            f"(activations {ours / GIB:.2f} / {theirs / GIB:.2f} GiB); zsad fits {CARD_GIB} GB: "
            f"{rows[stage]['zsad_gib'] <= CARD_GIB}"
        )
    print(json.dumps({"method": "aa_clip", "image_size": size, "estimates": rows}))


if __name__ == "__main__":
    main()
