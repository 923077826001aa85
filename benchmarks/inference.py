"""AnomalyCLIP inference throughput: images/s by batch size, and against a batch-size-1 loop.

    python benchmarks/inference.py                                   # tiny backbone, 224 px, CPU, fp32
    python benchmarks/inference.py --precision bf16-mixed            # CPU autocast to bfloat16
    # on a GPU (random weights give the same speed as OpenAI's): the paper's setting, fp32 and bf16
    python benchmarks/inference.py --backbone ViT-L-14-336-quickgelu --image-size 518 --dpam-start 6 \
        --map-layers 24 --device cuda --precision 32-true --batch-sizes 1,8,16,32 --images 256
    python benchmarks/inference.py --backbone ViT-L-14-336-quickgelu --image-size 518 --dpam-start 6 \
        --map-layers 24 --device cuda --precision bf16-mixed --batch-sizes 1,8,16,32 --images 256

Measures ``AnomalyCLIP.predict`` (image encoder with DPAM, text encoder, maps at the input size, Gaussian
blur) on random input tensors already on the device: no image decoding (see end_to_end.py for that).
Each batch size runs the same number of images after one warm-up batch; the batch-size-1 row is the
per-image loop the authors' test script runs. Also printed: the largest difference between batched and
per-image scores (each image gets its own score in a batch).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from perf_support import add_model_arguments, machine, model_from_arguments

from lightning_modules.anomalyclip.model import AnomalyCLIP

PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str):
    """What Lightning's ``precision`` does around a step: autocast for the mixed settings."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser, sorted(PRECISIONS))
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--images", type=int, default=64, help="images timed per batch size")
    args = parser.parse_args()
    cfg, device = model_from_arguments(args)
    torch.manual_seed(0)
    model = AnomalyCLIP(cfg).to(device).eval()
    size = (args.image_size, args.image_size)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = torch.randn(
        max(max(batch_sizes), args.images), 3, *size, generator=torch.Generator().manual_seed(1)
    ).to(device)

    print(f"machine: {machine()}; device {device}")
    print(
        f"setup: AnomalyCLIP on {args.backbone} (random weights), {args.image_size} px, DPAM from block "
        f"{args.dpam_start}, maps from {cfg.map_layers}, precision {args.precision} (float32 matmul "
        f"{args.matmul_precision}), {args.images} images per row"
    )
    rates: dict[int, float] = {}
    with torch.inference_mode(), autocast(device, args.precision):
        for bs in batch_sizes:
            n_batches = max(1, args.images // bs)
            model.predict(images[:bs], size)  # warm-up
            sync(device)
            start = time.perf_counter()
            for i in range(n_batches):
                j = (i * bs) % (len(images) - bs + 1)
                model.predict(images[j : j + bs], size)
            sync(device)
            rates[bs] = n_batches * bs / (time.perf_counter() - start)
        n_check = min(8, images.shape[0])
        batched, _ = model.predict(images[:n_check], size)
        single = torch.cat([model.predict(images[i : i + 1], size)[0] for i in range(n_check)])
        if args.matmul_precision != "highest":  # what TF32 / bf16 products cost in accuracy
            torch.set_float32_matmul_precision("highest")
            exact, _ = model.predict(images[:n_check], size)
            torch.set_float32_matmul_precision(args.matmul_precision)
    base = rates.get(1)
    print(f"{'batch':>6} {'images/s':>10} {'vs batch-1 loop':>16}")
    for bs, rate in rates.items():
        print(f"{bs:>6} {rate:>10.2f} {rate / base if base else float('nan'):>15.2f}x")
    best = max(rates, key=rates.get)
    if base:
        print(
            f"best: batch {best}, {rates[best]:.2f} images/s = {rates[best] / base:.2f}x the batch-size-1 loop"
        )
    print(
        f"batched vs per-image scores ({n_check} images), max |diff|: {(batched.float() - single.float()).abs().max().item():.2e}"
    )
    if args.matmul_precision != "highest":
        print(
            f"scores with float32 matmul {args.matmul_precision} vs highest ({n_check} images), max |diff|: "
            f"{(batched.float() - exact.float()).abs().max().item():.2e}"
        )


if __name__ == "__main__":
    main()
