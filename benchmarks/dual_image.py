"""Throughput and peak memory of the dual-image visual reference: k = 1 partner vs k = all other images,
for category pools of 50 and 200 images (tiny random-weight CLIP, CPU by default).

    python benchmarks/dual_image.py                      # pools 50 and 200, k = 1 and all, 64 px, batch 8
    python benchmarks/dual_image.py --pools 50 --image-size 96 --threads 1
    python benchmarks/dual_image.py --device cuda        # peak = torch.cuda.max_memory_allocated
    python benchmarks/dual_image.py --device cuda --backbone ViT-B-16-plus-240 --image-size 240   # random weights

Each configuration runs in its own process, so peak memory is that configuration's alone: on the CPU the
peak resident set (ru_maxrss) and its increase over the process's size just before the work starts (the
model, the random pool and the text features are already there); on CUDA the allocator's peak. The work
timed is what the dual-image module does for one category: encode the whole pool into the reference bank,
pair, then score every image in batches (text branch without TTA or multi-view, plus the visual
reference, streaming over partners in chunks of ``--chunk``). k = all uses the interval-mean aggregate
(mutual scoring); k = 1 the mean.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.anovl.model import BatchText  # noqa: E402
from lightning_modules.clip import TINY_MODEL, create_clip  # noqa: E402
from lightning_modules.clip.config import BackboneConfig  # noqa: E402
from lightning_modules.dual_image import (  # noqa: E402
    DualImageCLIP,
    DualImageConfig,
    DualImageTTAConfig,
    VisualReferenceConfig,
)
from lightning_modules.dual_image.reference import pair_partners  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_one(pool: int, k: int, args: argparse.Namespace) -> dict:
    """Encode a pool of ``pool`` images into a bank, pair, and score all of them; time and memory."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    clip_model, tokenizer = create_clip(args.backbone, None)
    depth = len(clip_model.visual.transformer.resblocks)
    layers = [depth // 2, 3 * depth // 4]  # tiny (6 blocks): 3, 4; ViT-B (12): 6, 9 as the dual_image config
    visual = VisualReferenceConfig(
        layers=layers, k=k, aggregate="interval_mean" if k < 0 else "mean", partner_chunk=args.chunk
    )
    cfg = DualImageConfig(
        backbone=BackboneConfig(name=args.backbone, pretrained=None, image_size=args.image_size),
        map_layer=depth,
        multi_view=False,
        templates_per_domain=1,
        visual=visual,
        tta=DualImageTTAConfig(enabled=False),
    )
    model = DualImageCLIP(cfg, clip_model, tokenizer).to(device)
    images = torch.randn(
        pool, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1)
    ).to(device)
    text = model.category_text("object", "object")
    grid = (model.vision.grid, model.vision.grid)
    size = (args.image_size, args.image_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mib()

    start = time.perf_counter()
    with torch.no_grad():
        embeddings, tokens = [], {}
        for chunk in images.split(args.batch_size):
            emb, layer_tokens = model.encode_reference(chunk)
            embeddings.append(emb)
            for layer, value in layer_tokens.items():
                tokens.setdefault(layer, []).append(value)
        bank = {layer: torch.cat(v) for layer, v in tokens.items()}
        partners = pair_partners(torch.cat(embeddings), "random", k, torch.Generator().manual_seed(0))
        bank_done = time.perf_counter()
        for rows in torch.arange(pool).split(args.batch_size):
            queries = {layer: t[rows.to(device)] for layer, t in bank.items()}
            reference = model.reference_grid(queries, bank, partners[rows], grid)
            batch_text = BatchText.stack([text] * len(rows))
            scores, maps = model.predict(images[rows.to(device)], batch_text, size, reference_grid=reference)
    if device.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()

    if device.type == "cuda":
        peak, extra = torch.cuda.max_memory_allocated() / 2**20, float("nan")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        extra = peak - before
    bank_mib = sum(t.numel() * t.element_size() for t in bank.values()) / 2**20
    return {
        "pool": pool,
        "k": "all" if k < 0 else k,
        "partners": int(partners.shape[1]),
        "images_per_s": pool / (end - start),
        "scoring_images_per_s": pool / (end - bank_done),
        "peak_mib": peak,
        "extra_mib": extra,
        "bank_mib": bank_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, nargs="+", default=[50, 200])
    parser.add_argument(
        "--ks", type=int, nargs="+", default=[1, -1], help="partners per image; -1: all others"
    )
    parser.add_argument("--backbone", default=TINY_MODEL, help="open_clip architecture, random weights")
    parser.add_argument(
        "--image-size", type=int, default=64, help="input size (tiny CLIP, patch 8: 64 px = 8 x 8 tokens)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=16, help="partners compared at once")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", type=int, nargs=2, metavar=("POOL", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_one(*args.child, args)))
        return

    passthrough = [
        f"--backbone={args.backbone}",
        f"--image-size={args.image_size}",
        f"--batch-size={args.batch_size}",
    ]
    passthrough += [f"--chunk={args.chunk}"]
    passthrough += [f"--device={args.device}", f"--threads={args.threads}"]
    print(
        f"dual-image visual reference, {args.backbone} (random weights) at {args.image_size} px, "
        f"batch {args.batch_size}, partner chunk {args.chunk}, device {args.device}, torch threads "
        f"{args.threads or torch.get_num_threads()}"
    )
    header = f"{'pool':>5} {'k':>4} {'partners':>8} {'img/s':>8} {'scoring img/s':>14} {'peak MiB':>9} {'+MiB':>7} {'bank MiB':>9}"
    print(header)
    for pool in args.pools:
        for k in args.ks:
            command = [sys.executable, __file__, "--child", str(pool), str(k), *passthrough]
            row = json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            print(
                f"{row['pool']:>5} {row['k']!s:>4} {row['partners']:>8} {row['images_per_s']:>8.1f} "
                f"{row['scoring_images_per_s']:>14.1f} {row['peak_mib']:>9.1f} {row['extra_mib']:>7.1f} {row['bank_mib']:>9.2f}"
            )


if __name__ == "__main__":
    main()
