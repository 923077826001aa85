"""MuSc speed and peak memory per category size: zsad's batched scoring against the authors' loop.

    python benchmarks/speed_musc.py --official /tmp/MuSc [--sizes 50 100 200 400] [--repeats 1] [--threads 1]

MuSc's cost grows with the square of a category's image count (every image is scored against every other),
so this times what happens after the features are extracted, for N images of one category, on both sides:

- **authors**: their models/musc.py ``make_category_data`` from the tapped tokens on, with their own
  ``LNAMD`` (batches of 4 images, their ``batch_size``), ``MSM`` (``compute_scores_fast``: one image
  against all the others at a time) and ``RsCIN``: per degree the layers' MSM scores averaged, the degrees
  averaged, upsampled bilinearly to the input size, image score = map maximum, re-scored by RsCIN;
- **zsad**: ``MuSc.category_grids_and_scores`` and ``MuSc.upsample`` (the same steps, MSM in blocks of query
  x reference images, ``distance_block_elements`` at its default for the device, or ``--block-elements``).

Inputs: seeded random tokens of the parity CLIP's shape (benchmarks/parity_musc.py: 240 px, 15 x 15 patches
plus the class token, width 64, four tapped layers), unit class embeddings of width 64; r_list 1 3 5,
topmin_max 0.3, k_list 1 2 3 (MVTec AD). The extraction itself (per image, linear in N) is not timed.

Each (side, N) runs in a fresh process with ``--threads`` torch threads (default 1): time = the fastest of
``--repeats`` runs; peak memory = ``torch.cuda.max_memory_allocated`` on a GPU, else the growth of the
process's peak resident memory (``ru_maxrss``) over what it held once the inputs existed. Both sides' maps
and scores are compared (max |Δ|), so the two timings are of the same computation. The last line is one
JSON object per size: seconds, peak MiB and the ratios (authors / zsad).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf_support import fastest  # noqa: E402

GRID, WIDTH, LAYERS, EMBED, IMAGE_SIZE = 15, 64, 4, 64, 240
R_LIST, K_LIST, TOPMIN_MAX = [1, 3, 5], [1, 2, 3], 0.3
THEIR_BATCH = 4  # configs/musc.yaml models.batch_size
SEED = 0
Scoring = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # () -> (image scores [N], maps [N, H, W])


def inputs(n: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``LAYERS`` token tensors ``[n, 1 + GRID**2, WIDTH]`` and unit embeddings ``[n, EMBED]`` (seeded)."""
    g = torch.Generator().manual_seed(SEED)
    tokens = [torch.randn(n, 1 + GRID * GRID, WIDTH, generator=g) for _ in range(LAYERS)]
    embeddings = torch.randn(n, EMBED, generator=g)
    embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    return [t.to(device) for t in tokens], embeddings.to(device)


def zsad_scoring(tokens: list[torch.Tensor], embeddings: torch.Tensor, block_elements: int | None) -> Scoring:
    """zsad's MuSc (built on the parity CLIP: only its grid and the config matter here)."""
    import parity_musc as pm

    from lightning_modules.musc.model import MuSc

    pm.ps.register_parity_model(pm.ZSAD_MODEL)
    cfg = pm.zsad_config(
        divide_num=1,
        k_list=list(K_LIST),
        r_list=list(R_LIST),
        topmin_max=TOPMIN_MAX,
        distance_block_elements=block_elements,
    )
    model = MuSc(cfg, *pm.ps.parity_clip(pm.state_dict(), name=pm.ZSAD_MODEL)).to(tokens[0].device)
    if model.grid != (GRID, GRID):
        raise SystemExit(f"the parity MuSc has a {model.grid} grid, this benchmark assumes {GRID}")
    n = embeddings.shape[0]
    size = (IMAGE_SIZE, IMAGE_SIZE)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        grids, scores = model.category_grids_and_scores(tokens, embeddings, [list(range(n))], size, K_LIST)
        return scores, model.upsample(grids, size)

    return run


def authors_scoring(official: Path, tokens: list[torch.Tensor], embeddings: torch.Tensor) -> Scoring:
    """models/musc.py make_category_data from ``patch_tokens_list`` on (divide_num 1), their modules."""
    sys.path.insert(0, str(official))
    from models.modules._LNAMD import LNAMD
    from models.modules._MSM import MSM
    from models.modules._RsCIN import RsCIN

    device = tokens[0].device
    n = embeddings.shape[0]
    features_list = list(range(1, LAYERS + 1))
    batches = [[t[i : i + THEIR_BATCH] for t in tokens] for i in range(0, n, THEIR_BATCH)]
    class_tokens = [e.cpu().numpy() for e in embeddings]

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_maps_r = torch.tensor([]).double()
        for r in R_LIST:
            lnamd = LNAMD(device=device, r=r, feature_dim=WIDTH, feature_layer=features_list)
            z_layers: dict[str, list[torch.Tensor]] = {}
            for patch_tokens in batches:
                with torch.no_grad(), torch.autocast("cuda", enabled=device.type == "cuda"):
                    features = lnamd._embed(patch_tokens)
                    features /= features.norm(dim=-1, keepdim=True)
                    for layer in range(LAYERS):
                        z_layers.setdefault(str(layer), []).append(features[:, :, layer, :])
            anomaly_maps_l = torch.tensor([]).double()
            for layer in z_layers:
                z = torch.cat(z_layers[layer], dim=0).to(device)
                msm = MSM(Z=z, device=device, topmin_min=0, topmin_max=TOPMIN_MAX)
                anomaly_maps_l = torch.cat((anomaly_maps_l, msm.unsqueeze(0).cpu()), dim=0)
            anomaly_maps_r = torch.cat((anomaly_maps_r, anomaly_maps_l.mean(0).unsqueeze(0)), dim=0)
        maps = anomaly_maps_r.mean(0).to(device)
        maps = F.interpolate(
            maps.view(n, 1, GRID, GRID), size=IMAGE_SIZE, mode="bilinear", align_corners=True
        ).cpu()
        ac_score = maps.numpy().reshape(n, -1).max(-1)
        return torch.as_tensor(np.asarray(RsCIN(ac_score, class_tokens, k_list=K_LIST))), maps[:, 0]

    return run


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokens, embeddings = inputs(args.worker_size, device)
    run = (
        zsad_scoring(tokens, embeddings, args.block_elements)
        if args.worker_side == "zsad"
        else authors_scoring(args.official.resolve(), tokens, embeddings)
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result: list[tuple[torch.Tensor, torch.Tensor]] = []

    def timed() -> None:
        result[:] = [run()]
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds = fastest(timed, args.repeats)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    scores, maps = result[0]
    np.savez(args.worker_out, scores=scores.double().cpu().numpy(), maps=maps.double().cpu().numpy())
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def measure(args: argparse.Namespace, side: str, n: int, out: Path) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--official",
        str(args.official),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        *(["--block-elements", str(args.block_elements)] if args.block_elements else []),
        "--worker-side",
        side,
        "--worker-size",
        str(n),
        "--worker-out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} at {n} images failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="checkout of xrli-U/MuSc")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--block-elements", type=int, help="zsad's distance_block_elements (default: per device)"
    )
    parser.add_argument("--worker-side", choices=("zsad", "authors"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_side:
        worker(args)
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-speed-musc-"))
    print(
        f"MuSc scoring of one category (parity CLIP shape: {GRID}x{GRID} patches, width {WIDTH}, {LAYERS} "
        f"layers, r_list {R_LIST}), {args.device}, {args.threads} thread(s), best of {args.repeats}"
    )
    rows = {}
    for n in args.sizes:
        ours = measure(args, "zsad", n, work / f"zsad_{n}.npz")
        theirs = measure(args, "authors", n, work / f"authors_{n}.npz")
        a, b = np.load(work / f"zsad_{n}.npz"), np.load(work / f"authors_{n}.npz")
        d_maps, d_scores = (
            float(np.abs(a["maps"] - b["maps"]).max()),
            float(np.abs(a["scores"] - b["scores"]).max()),
        )
        rows[n] = {
            "zsad_s": ours["seconds"],
            "authors_s": theirs["seconds"],
            "speedup": theirs["seconds"] / ours["seconds"],
            "zsad_peak_mib": ours["peak_mib"],
            "authors_peak_mib": theirs["peak_mib"],
            "max_abs_delta_maps": d_maps,
            "max_abs_delta_scores": d_scores,
        }
        print(
            f"  {n:4d} images: authors {theirs['seconds']:8.2f} s {theirs['peak_mib']:8.1f} MiB | zsad "
            f"{ours['seconds']:8.2f} s {ours['peak_mib']:8.1f} MiB | {rows[n]['speedup']:.2f}x faster, "
            f"max |Δ| maps {d_maps:.1e}, scores {d_scores:.1e}"
        )
    print(json.dumps({"method": "musc", "device": args.device, "threads": args.threads, "sizes": rows}))


if __name__ == "__main__":
    main()
