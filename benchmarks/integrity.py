"""What checking what zsad reads back costs: CRC-32s of checkpoints and feature tables, SHA-256s of maps.

    python benchmarks/integrity.py [--table-gb 1.0] [--repeats 3] [--skip-model]

1. A ViT-L AnomalyCLIP training checkpoint (the authors' backbone, random weights: only the shapes matter),
   as zsad writes it: the trainable prompts, Adam's state after one step, the identity. Loading it with and
   without the CRC-32 check (``lightning_modules.checkpoint_io.safe_torch_load`` vs plain
   ``torch.load(weights_only=True)``).
2. A feature table of ``--table-gb`` GB with ViT-L-shaped rows (1370 tokens x 1024 float32 per image, a
   518 px mask): ``FeatureTable.load`` (checks every record, then memory-maps) vs the memory-mapped load
   alone, and the throughput of the check, from which the cost for a 7 GB table is extrapolated (the table
   is in the page cache here: reading it from a cold disk adds the disk's read time, which the training
   pays anyway when it pages the table in).
3. SHA-256 throughput (saved maps' ``checksums.sha256``, data fingerprints' content hashes).

Every time is the median of ``--repeats`` runs measured in this one process.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch  # noqa: E402  (perf_support puts the repository on sys.path first)
from perf_support import machine

from lightning_modules.checkpoint_io import safe_torch_load, verify_checksums  # noqa: E402
from lightning_modules.feature_cache import FeatureTable  # noqa: E402

TOKENS, WIDTH, MASK = 1370, 1024, 518  # ViT-L-14-336 at 518 px: 37 x 37 patches + class token


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def anomalyclip_checkpoint(path: Path) -> int:
    """A ViT-L AnomalyCLIP checkpoint as ``ExactResume`` writes it (trainable state, Adam state); bytes."""
    from lightning_modules.anomalyclip import AnomalyCLIPConfig, AnomalyCLIPModule
    from lightning_modules.clip.config import BackboneConfig

    cfg = AnomalyCLIPConfig(
        backbone=BackboneConfig(name="ViT-L-14-336-quickgelu", pretrained=None, image_size=518)
    )
    module = AnomalyCLIPModule(cfg)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = module.configure_optimizers()
    sum(p.sum() for p in trainable).backward()
    optimizer.step()
    checkpoint = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()], "epoch": 1}
    module.on_save_checkpoint(checkpoint)  # trims the frozen CLIP, as every zsad checkpoint
    torch.save(checkpoint, path)
    return path.stat().st_size


def feature_table(path: Path, gigabytes: float) -> int:
    rows = max(1, int(gigabytes * 1e9 // (TOKENS * WIDTH * 4 + MASK * MASK)))
    table = FeatureTable(
        key="benchmark",
        identity={},
        features={"tokens": torch.randn(rows, TOKENS, WIDTH)},
        masks=torch.zeros(rows, MASK, MASK, dtype=torch.bool),
        labels=torch.zeros(rows, dtype=torch.long),
        category_ids=torch.zeros(rows, dtype=torch.long),
        has_mask=torch.ones(rows, dtype=torch.bool),
        image_paths=[f"{i}.png" for i in range(rows)],
    )
    table.save(path)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-gb", type=float, default=1.0, help="size of the measured feature table")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-model", action="store_true", help="no ViT-L checkpoint (it builds ViT-L)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_model:
            ckpt = Path(folder) / "anomalyclip.ckpt"
            size = anomalyclip_checkpoint(ckpt)
            repeats = 20 * args.repeats  # milliseconds: more runs for a stable median
            plain = _median_seconds(lambda: torch.load(ckpt, weights_only=True), repeats)
            check = _median_seconds(lambda: verify_checksums(ckpt), repeats)
            checked = _median_seconds(lambda: safe_torch_load(ckpt), repeats)
            print(
                f"ViT-L AnomalyCLIP checkpoint ({size / 2**20:.2f} MiB): torch.load {plain * 1e3:.2f} ms; "
                f"safe_torch_load (with the CRC-32 check) {checked * 1e3:.2f} ms; the check alone {check * 1e3:.2f} ms"
            )

        table_file = Path(folder) / "table.pt"
        size = feature_table(table_file, args.table_gb)
        mapped = _median_seconds(lambda: torch.load(table_file, weights_only=True, mmap=True), args.repeats)
        verify = _median_seconds(lambda: verify_checksums(table_file), args.repeats)
        loaded = _median_seconds(lambda: FeatureTable.load(table_file), args.repeats)
        rate = size / verify
        print(
            f"feature table ({size / 1e9:.2f} GB, in the page cache): memory-mapped load {mapped:.3f} s; "
            f"FeatureTable.load with the check {loaded:.2f} s; the check alone {verify:.2f} s = {rate / 1e9:.2f} GB/s"
        )
        print(f"extrapolated at that rate: a 7 GB table's check takes {7e9 / rate:.1f} s once per run start")

    data = torch.randn(64 * 2**20 // 4).numpy().tobytes()
    sha = _median_seconds(lambda: hashlib.sha256(data).digest(), args.repeats)
    print(f"SHA-256 (maps' checksums, data fingerprints): {len(data) / sha / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
