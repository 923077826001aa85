"""How much arithmetic AnomalyCLIP does, counted by torch: what bounds its speed on any accelerator.

    python benchmarks/flops.py                                   # the paper's setting: ViT-L-14-336 at 518 px
    python benchmarks/flops.py --peak "H100 SXM bf16=989" --peak "H100 SXM fp32=67"
    python benchmarks/flops.py --backbone zsad-tiny-vit --image-size 224 --dpam-start 2 --map-layers 6

The model (random weights) is moved to PyTorch's ``meta`` device and run under
``torch.utils.flop_counter.FlopCounterMode``: shapes are propagated and every matrix product, convolution
and attention is counted (2 FLOPs per multiply-add), but nothing is computed, so the paper's setting is
counted in seconds on a laptop. Element-wise work (GELU, softmax, normalisation, the loss) is not counted;
it is memory-bound and small next to the products.

Printed, per image: the image encoder (with the DPAM V-V path), the text encoder (once per evaluation, or
once per training step), the image and patch logits (their upsampling to maps is element-wise), the blur,
and one training step with and without the frozen-feature cache; then the whole ``--epochs`` training of
``--train-images`` images. ``--peak NAME=TFLOPS`` adds the images/s (and the training time) that a device
sustaining that many TFLOP/s could reach at most: an upper bound from the count, not a measurement; real
runs reach a fraction of a datasheet's peak.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from perf_support import add_model_arguments, model_from_arguments
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.anomalyclip.model import AnomalyCLIP
from lightning_modules.ops import gaussian_blur


def counted(fn) -> tuple[int, Any]:
    """``(FLOPs, result)`` of ``fn()`` (forward, and backward if ``fn`` calls it)."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


def anomalyclip_flops(model: AnomalyCLIP, image_size: int, train_batch: int) -> dict[str, float]:
    """Per-image FLOPs of AnomalyCLIP's parts on a model already on the ``meta`` device."""
    size = (image_size, image_size)
    image = torch.empty(1, 3, *size, device="meta")
    batch = torch.empty(train_batch, 3, *size, device="meta")
    with torch.no_grad():
        encoder, features = counted(lambda: model.encode_images(image))
        text, text_embeddings = counted(model.text_embeddings)
        logits, output = counted(lambda: model.scores(features, size, text=text_embeddings))
        blur, _ = counted(lambda: gaussian_blur(output.anomaly_map(), model.cfg.gaussian_sigma))

    labels = torch.zeros(train_batch, dtype=torch.long, device="meta")
    masks = torch.zeros(train_batch, *size, device="meta")
    cached_features = model.encode_images(batch)

    def cached_step() -> None:  # what a training step computes when the cache serves the features
        model.loss(model.scores(cached_features, size), labels, masks)["loss"].backward()

    step = counted(cached_step)[0] / train_batch
    return {
        "image encoder": encoder,
        "text encoder (once per evaluation)": text,
        "logits (class token and patches)": logits,
        "gaussian blur": blur,
        "training step, cached (per image)": step,
        "training step, uncached (per image)": step + encoder,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser, ["32-true"])
    parser.set_defaults(backbone="ViT-L-14-336-quickgelu", image_size=518, dpam_start=6, map_layers="24")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=1725)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--peak", action="append", default=[], help="NAME=TFLOPS, repeatable")
    args = parser.parse_args()
    peaks = {}
    for item in args.peak:
        name, _, value = item.rpartition("=")
        if not name:
            parser.error(f"--peak takes NAME=TFLOPS, got {item!r}")
        peaks[name] = float(value)
    cfg, _ = model_from_arguments(args)
    torch.manual_seed(0)
    model = AnomalyCLIP(cfg).eval().to("meta")
    flops = anomalyclip_flops(model, args.image_size, args.train_batch)

    print(
        f"setup: AnomalyCLIP on {args.backbone}, {args.image_size} px, DPAM from block {args.dpam_start}, "
        f"maps from {cfg.map_layers}, training batch {args.train_batch}"
    )
    for name, value in flops.items():
        print(f"{name:>38}: {value / 1e9:12.4f} GFLOP")
    inference = flops["image encoder"] + flops["logits (class token and patches)"] + flops["gaussian blur"]
    print(f"{'inference per image':>38}: {inference / 1e9:12.4f} GFLOP (text encoder once per evaluation)")
    n = args.train_images
    cached = flops["image encoder"] * n + args.epochs * n * flops["training step, cached (per image)"]
    uncached = args.epochs * n * flops["training step, uncached (per image)"]
    print(
        f"{args.epochs} epochs on {n} images: {cached / 1e15:.2f} PFLOP with the cache (features once), "
        f"{uncached / 1e15:.2f} PFLOP without: {uncached / cached:.1f}x less arithmetic"
    )
    for name, tflops in peaks.items():
        rate = tflops * 1e12 / inference
        print(
            f"at {tflops:g} TFLOP/s sustained ({name}): at most {rate:.0f} images/s inference; "
            f"training at least {cached / (tflops * 1e12):.1f} s cached, {uncached / (tflops * 1e12):.1f} s uncached"
        )


if __name__ == "__main__":
    main()
