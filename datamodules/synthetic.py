"""Synthetic anomaly-detection benchmark in the MVTec AD raw layout.

The demo and the tests need data that exists without downloads, looks like an inspection benchmark
(objects and textures, several defect kinds, pixel masks) and comes in two visibly different styles
so that a "source" and a "target" domain differ, as in the zero-shot cross-dataset protocol.

Layout written under ``out`` (exactly MVTec AD's, so the real MVTec indexer reads it unchanged)::

    {cls}/train/good/000.png
    {cls}/test/good/000.png
    {cls}/test/<defect>/000.png
    {cls}/ground_truth/<defect>/000_mask.png      # 0/255, same size as the image
    synthetic_manifest.json                       # marks the folder as synthetic; seed, params, counts

Everything is deterministic: each image draws from its own ``numpy`` Generator seeded from
(seed, style, category, split, index), never from a global RNG, so the same seed and parameters give
byte-identical files and adding images to one split leaves the others unchanged. A defect's mask is
computed as exactly the pixels whose final 8-bit value the defect changed.

The drawing (styles, categories, defects, per-image generators) is :mod:`datamodules.synthetic_render`;
this module writes the dataset and its manifest and is the ``zsad data synth`` command.

This is demo and test data only; nothing that a user runs on real data should default to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.atomic_io import atomic_write_text
from datamodules.errors import ZsadError
from datamodules.synthetic_render import (
    DEFAULT_IMAGE_SIZE,
    DEFECT_KINDS,
    STYLES,
    render_sample,
)

MANIFEST_NAME = "synthetic_manifest.json"
FORMAT_VERSION = 1
DEFAULT_STYLE = "industrial"
DEFAULT_N_TRAIN = 4
DEFAULT_N_TEST_GOOD = 6
DEFAULT_N_DEFECT = 2
MIN_IMAGE_SIZE = 32


class SyntheticOutputError(ZsadError, ValueError):
    """The output folder cannot be written safely (non-empty, or not a previous synthetic dataset)."""


@dataclass(frozen=True)
class SyntheticSummary:
    """What was written: enough to index or assert on the dataset without rescanning it."""

    root: Path
    seed: int
    style: str
    image_size: int
    categories: tuple[str, ...]
    kinds: dict[str, str]
    # category -> {"train/good": n, "test/good": n, "test/<defect>": n, ...}
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    manifest_path: Path = Path()

    @property
    def n_images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def n_anomalous(self) -> int:
        return sum(
            n
            for c in self.counts.values()
            for key, n in c.items()
            if key.startswith("test/") and key != "test/good"
        )


# --------------------------------------------------------------------------------------------------
# dataset writer


def _save_png(path: Path, array: np.ndarray) -> None:
    # PIL writes no timestamps into PNGs, so identical arrays give identical bytes.
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse non-empty folders; with ``overwrite``, clear only what an earlier run here wrote.

    Deleting is limited to a folder that holds a synthetic manifest, and only the categories it
    lists, so a mistyped ``--out`` can never wipe real data.
    """
    if out.exists() and not out.is_dir():
        raise SyntheticOutputError(f"--out {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise SyntheticOutputError(f"--out {out} is not empty; choose an empty folder or pass --overwrite")
    manifest = out / MANIFEST_NAME
    if not manifest.is_file():
        raise SyntheticOutputError(
            f"--out {out} is not empty and has no {MANIFEST_NAME}; --overwrite only replaces an earlier synthetic dataset"
        )
    try:
        previous = json.loads(manifest.read_text())
        names = list(previous["categories"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SyntheticOutputError(
            f"--out {out}: cannot read {MANIFEST_NAME} ({exc}); remove the folder by hand"
        ) from exc
    for name in names:
        target = out / name
        if name and "/" not in name and "\\" not in name and name not in (".", "..") and target.is_dir():
            shutil.rmtree(target)
    manifest.unlink()
    leftover = sorted(p.name for p in out.iterdir())
    if leftover:
        raise SyntheticOutputError(
            f"--out {out} still holds files the synthetic generator did not write: {', '.join(leftover[:5])}"
        )


def generate_synthetic_dataset(
    out: Path | str,
    seed: int = 0,
    style: str = DEFAULT_STYLE,
    categories: Sequence[str] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    n_train: int = DEFAULT_N_TRAIN,
    n_test_good: int = DEFAULT_N_TEST_GOOD,
    n_test_defect_per_kind: int = DEFAULT_N_DEFECT,
    defect_kinds: Sequence[str] | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write a synthetic dataset in the MVTec AD raw layout and return what was written.

    Defaults (4 categories x 18 images at 64 px) are sized for the CPU demo; every count is
    configurable. ``categories`` must belong to ``style`` (styles have disjoint category names, so a
    source and a target dataset never share classes).
    """
    out = Path(out)
    if style not in STYLES:
        raise SyntheticOutputError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    st = STYLES[style]
    cats = tuple(categories) if categories is not None else tuple(st.categories)
    unknown = [c for c in cats if c not in st.categories]
    if unknown or not cats or len(set(cats)) != len(cats):
        raise SyntheticOutputError(
            f"categories {list(cats)} invalid for style {style!r}; choose distinct names from {', '.join(st.categories)}"
        )
    defects = tuple(defect_kinds) if defect_kinds is not None else DEFECT_KINDS
    if not defects or any(d not in DEFECT_KINDS for d in defects) or len(set(defects)) != len(defects):
        raise SyntheticOutputError(
            f"defect kinds {list(defects)} invalid; choose from {', '.join(DEFECT_KINDS)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SyntheticOutputError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise SyntheticOutputError(f"image size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    if min(n_train, n_test_good, n_test_defect_per_kind) < 0 or n_test_good + n_test_defect_per_kind == 0:
        raise SyntheticOutputError("image counts must be >= 0 and the test split must not be empty")
    _prepare_out(out, overwrite)

    splits = {"train/good": n_train, "test/good": n_test_good} | {
        f"test/{d}": n_test_defect_per_kind for d in defects
    }
    counts: dict[str, dict[str, int]] = {}
    for cat in cats:
        counts[cat] = {}
        for split, n in splits.items():
            folder = out / cat / split
            folder.mkdir(parents=True, exist_ok=True)
            defect = split.split("/", 1)[1]
            if split.startswith("test/") and defect != "good":
                (out / cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image, mask = render_sample(int(seed), style, cat, split, i, image_size)
                _save_png(folder / f"{i:03d}.png", image)
                if mask is not None:
                    _save_png(
                        out / cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255
                    )
            counts[cat][split] = n

    manifest = {
        "synthetic": True,
        "generator": "datamodules.synthetic",
        "format_version": FORMAT_VERSION,
        "note": "synthetic demo/test data, not a real benchmark",
        "layout": "mvtec",
        "seed": int(seed),
        "style": style,
        "style_description": st.description,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect_per_kind": n_test_defect_per_kind,
        "defect_kinds": list(defects),
        "categories": {
            c: {
                "kind": st.categories[c].kind,
                "description": st.categories[c].description,
                "counts": counts[c],
            }
            for c in cats
        },
    }
    manifest_path = out / MANIFEST_NAME
    # written last and atomically: a dataset cut short by a kill or a full disk has no manifest
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return SyntheticSummary(
        root=out,
        seed=int(seed),
        style=style,
        image_size=image_size,
        categories=cats,
        kinds={c: st.categories[c].kind for c in cats},
        counts=counts,
        manifest_path=manifest_path,
    )


def write_visa_layout(mvtec_root: Path | str, out: Path | str, size: tuple[int, int]) -> Path:
    """The *test* images of a synthetic MVTec-layout dataset in VisA's raw layout under ``out``, resized
    to ``size`` (W, H; VisA's images are landscape): ``{cls}/Data/Images/{Normal,Anomaly}/{defect}_{i}.png``,
    masks (0/255, resized nearest) in ``{cls}/Data/Masks/Anomaly/`` and ``split_csv/1cls.csv`` listing
    them, categories sorted and files sorted within each (for methods with VisA-specific protocols)."""
    mvtec_root, out = Path(mvtec_root), Path(out)
    rows = []
    for category in sorted(p.name for p in mvtec_root.iterdir() if p.is_dir()):
        for image in sorted((mvtec_root / category / "test").glob("*/*.png")):
            defect = image.parent.name
            normal = defect == "good"
            relative = Path(
                category, "Data", "Images", "Normal" if normal else "Anomaly", f"{defect}_{image.name}"
            )
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            with Image.open(image) as decoded:
                _save_png(out / relative, np.asarray(decoded.resize(size, Image.Resampling.BILINEAR)))
            mask = ""
            if not normal:
                mask_path = Path(category, "Data", "Masks", "Anomaly", relative.name)
                (out / mask_path).parent.mkdir(parents=True, exist_ok=True)
                with Image.open(
                    mvtec_root / category / "ground_truth" / defect / f"{image.stem}_mask.png"
                ) as m:
                    _save_png(out / mask_path, np.asarray(m.resize(size, Image.Resampling.NEAREST)))
                mask = mask_path.as_posix()
            rows.append(
                ",".join([category, "test", "normal" if normal else "anomaly", relative.as_posix(), mask])
            )
    (out / "split_csv").mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "split_csv" / "1cls.csv", "\n".join(["object,split,label,image,mask", *rows]) + "\n"
    )
    return out


# --------------------------------------------------------------------------------------------------
# CLI: registered by pipelines/cli.py as `zsad data synth`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``zsad data synth``."""
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write (must be empty unless --overwrite)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="dataset seed; same seed and flags -> identical files"
    )
    parser.add_argument("--style", choices=sorted(STYLES), default=DEFAULT_STYLE, help="visual domain")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="square image side in px")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=None,
        help="subset of the style's categories (space- or comma-separated); default: all of them. "
        + "; ".join(f"{name}: {', '.join(st.categories)}" for name, st in STYLES.items()),
    )
    parser.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN, help="train/good images per category")
    parser.add_argument(
        "--n-test-good", type=int, default=DEFAULT_N_TEST_GOOD, help="test/good images per category"
    )
    parser.add_argument(
        "--n-defect", type=int, default=DEFAULT_N_DEFECT, help="test images per defect kind and category"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier synthetic dataset in --out (never other data)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the dataset described by the parsed flags; user errors raise SyntheticOutputError."""
    categories = None
    if args.categories:
        categories = [c for item in args.categories for c in item.split(",") if c]
    start = time.perf_counter()
    summary = generate_synthetic_dataset(
        args.out,
        seed=args.seed,
        style=args.style,
        categories=categories,
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect_per_kind=args.n_defect,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - start
    cats = ", ".join(f"{c} ({summary.kinds[c]})" for c in summary.categories)
    print(
        f"wrote synthetic {summary.style} dataset (seed {summary.seed}) to {summary.root}: "
        f"{summary.n_images} images ({summary.n_anomalous} anomalous) at {summary.image_size} px "
        f"in {seconds:.1f}s; categories: {cats}"
    )
    return 0
