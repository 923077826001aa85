"""AdaCLIP's peak GPU memory in training, estimated without a GPU: parameters + optimizer + activations.

    python benchmarks/memory_adaclip.py                      # ViT-L-14-336 at 518 px, batch 1 (the authors')
    python benchmarks/memory_adaclip.py --batch-size 8

The real model (zsad's AdaCLIP on open_clip's ViT-L-14-336, the authors' prompting settings) is built on
PyTorch's ``meta`` device, where tensors have shapes and dtypes but no data, and one training step's forward
and loss run there while ``torch.autograd.graph.saved_tensors_hooks`` records every tensor autograd keeps
for the backward pass (views of one storage counted once), with attention counted as a fused GPU kernel
keeps it (flash / memory-efficient attention, which PyTorch picks for these shapes on a GPU): that is
the activation memory for the precision the model runs in. Two precisions bound the authors' fp16 autocast: float32 (an upper bound) and
the whole model in float16 (a lower bound: autocast keeps layer norms and softmaxes in float32). HSF
(k-means on 100 patches) runs on the CPU and is left out (a few hundred KiB).

Added to the activations: the frozen CLIP's weights (float32), the trainable parameters with their
gradients and AdamW's two moments, and for the authors' code what it keeps besides: gradients for every
CLIP weight (their CLIP parameters keep ``requires_grad=True``; only the optimizer is restricted) and
autocast's float16 copies of the weights (cached for the step); their attention keeps the L x L matrices
(``need_weights=True``). The CUDA context (~0.5 GiB) and allocator slack are not counted.
``method.gradient_checkpointing=true`` keeps only each vision block's input and recomputes the block in the
backward pass (one block's activations live at a time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from perf_support import GIB, saved_bytes  # noqa: E402

CARD_GIB = 11.0  # the 11 GB cards of AdaCLIP issue 23 (two 2080 Ti)


def build(backbone: str, image_size: int, dtype: torch.dtype):
    import open_clip

    from lightning_modules.adaclip import AdaCLIP, AdaCLIPConfig
    from lightning_modules.clip.config import BackboneConfig
    from lightning_modules.clip.factory import register_builtin_configs

    register_builtin_configs()
    with torch.device("meta"):
        clip = open_clip.create_model(backbone, pretrained=None, device="meta").to(dtype)
    cfg = AdaCLIPConfig(
        backbone=BackboneConfig(name=backbone, pretrained=None, image_size=image_size), use_hsf=False
    )
    with torch.device("meta"):
        model = AdaCLIP(cfg, clip, open_clip.get_tokenizer(backbone))
    model.prompts.to(dtype)
    model.set_classes(["bottle"])
    return model


def activation_bytes(model, batch: int, image_size: int, dtype: torch.dtype, fused_attention: bool) -> int:
    """What one training step's forward and loss keep for the backward pass."""
    record: dict[int, int] = {}
    images = torch.empty(batch, 3, image_size, image_size, device="meta", dtype=dtype)
    masks = torch.empty(batch, image_size, image_size, device="meta", dtype=dtype)
    labels = torch.zeros(batch, dtype=torch.long, device="meta")
    with saved_bytes(record, fused_attention):
        output = model(images, labels)
        model.loss(output, labels, masks)
    return sum(record.values())


def block_bytes(model, batch: int, dtype: torch.dtype) -> tuple[int, int]:
    """(activations one vision block keeps, its input): gradient checkpointing keeps only the input and
    brings the activations back for one block at a time in the backward pass."""
    vision = model.vision
    length = vision.grid**2 + 1 + model.cfg.prompting_length
    tokens = torch.empty(batch, length, vision.width, device="meta", dtype=dtype, requires_grad=True)
    record: dict[int, int] = {}
    with saved_bytes(record, fused_attention=True):
        vision._run_block(vision.blocks[0], tokens)
    return sum(record.values()), tokens.numel() * dtype.itemsize


def report(backbone: str, image_size: int, batch: int) -> None:
    acts: dict[tuple[str, torch.dtype], int] = {}
    for dtype in (torch.float32, torch.float16):
        model = build(backbone, image_size, dtype)
        acts["zsad", dtype] = activation_bytes(model, batch, image_size, dtype, fused_attention=True)
        acts["authors", dtype] = activation_bytes(model, batch, image_size, dtype, fused_attention=False)
        block, block_input = block_bytes(model, batch, dtype)
        depth = model.vision.depth
        acts["checkpointed", dtype] = acts["zsad", dtype] - depth * block + depth * block_input + block
    frozen = sum(p.numel() for p in model.clip.parameters()) * 4
    trainable = sum(p.numel() for p in model.prompts.parameters()) * 4
    base, cast = frozen + 4 * trainable, frozen / 2  # + autocast's float16 copies of the weights
    print(
        f"AdaCLIP training step, {backbone} at {image_size} px, batch {batch}, the authors' prompts (SD, VL, 4 x 5)"
    )
    print(f"  frozen CLIP weights (float32)          {frozen / GIB:6.2f} GiB")
    print(f"  trainable {trainable // 4 / 1e6:.1f} M + gradients + AdamW   {4 * trainable / GIB:6.2f} GiB")
    rows = (
        ("zsad", "zsad", base),
        ("zsad, gradient_checkpointing=true", "checkpointed", base),
        ("the authors' code", "authors", base + frozen),  # + gradients of every CLIP weight
    )
    print(f"  {'':36} {'activations fp32/fp16':>22} {'peak, fp16 autocast':>20} {'float32':>8}")
    for label, key, fixed in rows:
        a32, a16 = acts[key, torch.float32], acts[key, torch.float16]
        low, high = (fixed + cast + a16) / GIB, (fixed + cast + a32) / GIB
        print(
            f"  {label:36} {a32 / GIB:9.2f} / {a16 / GIB:5.2f} GiB {low:8.1f} - {high:4.1f} GiB {(fixed + a32) / GIB:6.1f} GiB"
        )
    print(f"  an {CARD_GIB:.0f} GB card: about {CARD_GIB * 1e9 / GIB - 0.5:.1f} GiB after the CUDA context")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="ViT-L-14-336-quickgelu")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    report(args.backbone, args.image_size, args.batch_size)


if __name__ == "__main__":
    main()
