"""``zsad evaluate-maps``: metrics of anomaly maps saved by any method against a dataset's ground truth.

Like the MVTec AD evaluation script, but with this project's exact metric suite: maps are one file per
test image (``.npy`` or ``.tiff``) at the image's path below the dataset root without its suffix, e.g.
``MAPS/{cls}/test/{defect}/{stem}.npy`` (what ``eval.save_maps`` writes). ``--dataset mvtec_layout``
(default) reads any folder in MVTec AD's layout on its own, ``mvtec`` the same for MVTec AD itself (its
classes, as ``zsad data check mvtec``); any other registered dataset is read by its parser. An image that
several categories hold (MVTec LOCO's good images, in both rows of their object) is looked up as
``{stem}@{category}`` first (``eval.save_maps`` saves one map per row), then as ``{stem}``.
The image score of each image is the maximum of its map (as in the MVTec AD script), or the method's own
score from ``--image-scores`` (the ``image_scores.csv`` that ``eval.save_maps`` writes beside the maps).
Maps written by ``eval.save_maps`` come with ``dataset.json``, from which the dataset, root, parser options
and split default, so ``zsad evaluate-maps --maps runs/x/maps/visa`` scores them against what they were
written for.
Maps whose size differs from the ground truth are resized bilinearly to the mask size, and the output says
so.

    zsad evaluate-maps --maps runs/x/maps/mvtec [--gt-root /data/mvtec] [--output metrics.json]
    python -m pipelines.evaluate_maps ...   (same)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.atomic_io import atomic_write_text
from datamodules.errors import DatasetLayoutError, ZsadError
from datamodules.index import DatasetIndex
from datamodules.parsers.mvtec import LAYOUT_DATASET, MVTEC_CATEGORIES
from datamodules.regions import RegionRules, load_regions
from pipelines.map_writer import (
    DATASET_FILE,
    ChecksumMismatchError,
    checked_bytes,
    map_name,
    read_checksums,
    read_dataset_record,
    read_image_scores,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAP_SUFFIXES = (".npy", ".tiff", ".tif")
EXIT_USER_ERROR = 2


class MapsError(ZsadError):
    """An anomaly map is missing, unreadable or has the wrong shape."""


@dataclass(frozen=True)
class TestImage:
    """One test image of the ground truth: where its map should be and where its mask is."""

    category: str
    relative: str  # the image's path below the dataset root without suffix: the map is MAPS/{relative}.npy
    image: Path
    mask: Path | None  # None: no anomalous pixels (a normal image) or a dataset without pixel ground truth
    label: int  # 0 normal, 1 anomalous
    group: str | None = (
        None  # multi-view datasets (Real-IAD): the physical sample, for the sample-level metrics
    )

    @property
    def names(self) -> list[str]:
        """The names its map and score may have, own first: an image several categories hold is saved per
        category (``{stem}@{category}``, map_writer.map_name); maps of another tool name it once."""
        plain = self.relative.removesuffix(f"@{self.category}")
        return [self.relative] if plain == self.relative else [self.relative, plain]


# --------------------------------------------------------------------------------------------------------
# Ground truth (MVTec AD layout), kept self-contained on purpose
# --------------------------------------------------------------------------------------------------------
def mvtec_categories(root: Path, dataset: str = LAYOUT_DATASET) -> list[str]:
    """The ``{class}/test`` folders; ``mvtec`` (MVTec AD) also needs MVTec AD's classes, as its parser."""
    if not root.is_dir():
        raise DatasetLayoutError(f"--gt-root {root} is not a directory")
    cats = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    if not cats:
        raise DatasetLayoutError(
            f"--gt-root {root} does not look like an MVTec AD root: no {{class}}/test folders in it"
        )
    if dataset == "mvtec" and not set(cats) & set(MVTEC_CATEGORIES):
        raise DatasetLayoutError(
            f"--gt-root {root} has none of MVTec AD's classes (found: {', '.join(cats[:5])}): "
            f"read other data in this layout with --dataset {LAYOUT_DATASET}"
        )
    return cats


def mvtec_test_images(root: Path, category: str) -> list[TestImage]:
    """``{cls}/test/{good,<defect>}/*`` with masks ``{cls}/ground_truth/<defect>/{stem}_mask.png``, paired by name."""
    test_dir = root / category / "test"
    if not test_dir.is_dir():
        raise DatasetLayoutError(f"no test folder for class '{category}' in --gt-root {root}")
    items = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for image in sorted(p for p in defect_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            mask = None
            if defect_dir.name != "good":
                mask = root / category / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetLayoutError(f"missing ground-truth mask {mask} for test image {image}")
            relative = f"{category}/test/{defect_dir.name}/{image.stem}"
            items.append(TestImage(category, relative, image, mask, int(mask is not None)))
    if not items:
        raise DatasetLayoutError(f"no test images under {test_dir}")
    return items


def indexed_test_images(
    dataset: str, root: Path, options: dict[str, str], split: str, saved: list[str] | None = None
) -> tuple[dict[str, list[TestImage]], DatasetIndex]:
    """The test images of any registered dataset, read by zsad's own parser for its raw layout, by category;
    and the index (which categories have pixel ground truth, region rules). Paths mirror what
    ``eval.save_maps`` writes: an image is saved per category where several of the ``saved`` categories
    (the run's, dataset.json's; None: every category) hold it."""
    from datamodules.index import build_index

    index = build_index(dataset, root, **options).select(split=split)
    if not index.records:
        raise DatasetLayoutError(f"dataset '{dataset}' at {root} has no '{split}' images")
    items: dict[str, list[TestImage]] = {}
    known = set(index.categories())
    run_rows = [c for c in saved or () if c in known]
    shared = (index.select(categories=run_rows) if run_rows else index).shared_images()
    for record in index.records:
        relative = map_name(record.image_path, index.root, record.category, record.image_path in shared)
        image = TestImage(
            record.category, relative, record.image_path, record.mask_path, record.label, record.group
        )
        items.setdefault(record.category, []).append(image)
    return items, index


def read_mask(item: TestImage) -> np.ndarray:
    """Binary (H, W) mask (any non-zero value is anomalous); without one, an empty mask of the image's size."""
    from datamodules.images import image_size, load_mask

    if item.mask is None:
        width, height = image_size(item.image)  # header only
        return np.zeros((height, width), dtype=bool)
    return load_mask(item.mask)


def regions_of(item: TestImage, rules: RegionRules) -> dict[str, torch.Tensor]:
    """The defect regions of an image whose mask is a folder (MVTec LOCO, AutoVI) at the ground truth's own
    resolution, with MVTec's saturation areas: the evaluator's ``regions``/``region_saturation``."""
    if item.mask is None or not item.mask.is_dir():
        return {}
    regions = load_regions(item.mask, rules)
    masks = torch.from_numpy(np.stack([array for array, _ in regions]))[None]
    areas = [rule.saturation_area(int(array.sum())) for array, rule in regions]
    return {"regions": masks, "region_saturation": torch.tensor([areas], dtype=torch.float64)}


# --------------------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------------------
def _has_maps(maps_root: Path, category: str, items: list[TestImage]) -> bool:
    """Whether ``--maps`` holds maps of this class (its folder, for the MVTec layout read class by class)."""
    if not items:
        return (maps_root / category).is_dir()
    return any(path.is_file() for item in items for path in map_candidates(maps_root, item))


def map_candidates(maps_root: Path, item: TestImage) -> list[Path]:
    bases = [maps_root / name for name in item.names]
    return [base.with_name(base.name + suffix) for base in bases for suffix in MAP_SUFFIXES]


def find_map(maps_root: Path, item: TestImage) -> Path:
    for path in map_candidates(maps_root, item):
        if path.is_file():
            return path
    looked = f"{maps_root / item.relative}{{{','.join(MAP_SUFFIXES)}}}"
    raise MapsError(f"no anomaly map for {item.relative} (looked for {looked})")


def read_map(
    path: Path, maps_root: Path | None = None, checksums: dict[str, str] | None = None
) -> np.ndarray:
    """A 2-D float map from .npy or .tiff; singleton channel axes are dropped. With ``checksums`` (the
    ``checksums.sha256`` of ``maps_root``) a listed map must match its SHA-256."""
    try:
        data = checked_bytes(path, maps_root, checksums) if checksums else path.read_bytes()
        if path.suffix == ".npy":
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            import tifffile

            arr = tifffile.imread(io.BytesIO(data))
    except ChecksumMismatchError as err:
        raise MapsError(str(err)) from None
    except (OSError, ValueError) as err:
        raise MapsError(f"cannot read anomaly map {path}: {err}") from err
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise MapsError(f"anomaly map {path} has shape {arr.shape}; expected (H, W)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise MapsError(f"anomaly map {path} has dtype {arr.dtype}; expected real numbers")
    arr = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=False)
    if np.isnan(arr).any():
        raise MapsError(f"anomaly map {path} contains NaN")
    return arr


def resize_map(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    out = torch.nn.functional.interpolate(t, size=shape, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


# --------------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from datamodules.cli import parse_option

    parser.add_argument(
        "--gt-root",
        type=Path,
        help="dataset root with the ground truth (default: the root in MAPS/dataset.json, which eval.save_maps "
        "writes; --dataset, --option and --split default to that record too)",
    )
    parser.add_argument(
        "--maps",
        required=True,
        type=Path,
        help="folder of maps, one per test image at its path below the dataset root: "
        "{cls}/test/{defect}/{stem}.npy (or .tiff) in MVTec AD's layout",
    )
    parser.add_argument(
        "--dataset",
        metavar="NAME",
        help=f"ground-truth layout: {LAYOUT_DATASET} (any folder in MVTec AD's layout, classes discovered; the "
        "default without a dataset.json), mvtec (MVTec AD itself), or any dataset of `zsad data list`, read "
        "by its own parser",
    )
    parser.add_argument(
        "--option",
        type=parse_option,
        action="append",
        metavar="KEY=VALUE",
        help="parser option of --dataset (repeatable), as in `zsad data check`",
    )
    parser.add_argument("--split", help="split of --dataset to evaluate (default: test)")
    parser.add_argument(
        "--categories", nargs="+", metavar="CLS", help="classes to evaluate (default: the classes with maps)"
    )
    parser.add_argument(
        "--output", help="JSON file for the metrics (default: MAPS/metrics.json; '-' prints the JSON instead)"
    )
    parser.add_argument(
        "--image-scores",
        type=Path,
        help="CSV with columns image (the map's path below --maps without suffix) and score: the method's image scores, e.g. "
        "the image_scores.csv that eval.save_maps writes beside the maps (default: each map's maximum)",
    )
    parser.add_argument(
        "--fpr-limit",
        type=float,
        default=0.3,
        help="FPR limit of both AUPROs: exact aupro and the published cflow-style aupro_cflow (default 0.3)",
    )
    parser.add_argument(
        "--spro-fpr-limit",
        type=float,
        default=0.05,
        help="FPR limit of AU-sPRO, for datasets with region saturation rules (MVTec LOCO, AutoVI; default 0.05)",
    )


@dataclass(frozen=True)
class GroundTruth:
    """Which ground truth the maps are scored against, and how that differs from what they were written for."""

    dataset: str
    root: Path
    options: dict[str, str]
    split: str
    notes: list[str]
    saved: list[str] | None = None  # the categories the maps were written for (dataset.json), if known


def ground_truth(args: argparse.Namespace, maps_root: Path) -> GroundTruth:
    """``--dataset``/``--gt-root``/``--option``/``--split``, each defaulting to the ``dataset.json`` that
    ``eval.save_maps`` wrote beside the maps. An explicit value that selects other images than the record
    (dataset, options, split) is used and reported in the notes: the metrics would not be the run's."""
    try:
        record = read_dataset_record(maps_root)
    except ValueError as err:
        raise MapsError(str(err)) from err
    options = dict(args.option) if args.option is not None else None
    if record is None:
        if args.gt_root is None:
            raise ZsadError(
                f"--gt-root is needed: --maps {maps_root} has no {DATASET_FILE} (eval.save_maps writes one) "
                "naming the dataset root"
            )
        return GroundTruth(
            args.dataset or LAYOUT_DATASET, Path(args.gt_root), options or {}, args.split or "test", []
        )
    notes = [
        f"{flag} {given} differs from the {recorded} the maps were written for ({maps_root / DATASET_FILE})"
        for flag, given, recorded in (
            ("--dataset", args.dataset, record["dataset"]),
            ("--option", options, record["options"]),
            ("--split", args.split, record["split"]),
        )
        if given is not None and given != recorded
    ]
    root = Path(args.gt_root if args.gt_root is not None else record["root"])
    if args.gt_root is None and not root.is_dir():
        raise DatasetLayoutError(
            f"the dataset root in {maps_root / DATASET_FILE}, {root}, is not a directory here: pass --gt-root"
        )
    return GroundTruth(
        dataset=args.dataset or record["dataset"],
        root=root,
        options=options if options is not None else dict(record["options"]),
        split=args.split or record["split"],
        notes=notes,
        # the run's categories, where the maps are scored against the dataset (and parser options) they
        # were written for
        saved=record.get("categories")
        if args.dataset in (None, record["dataset"]) and options in (None, record["options"])
        else None,
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate one class at a time (memory is freed between classes); returns the exit code."""
    from lightning_modules.metrics import AnomalyEvaluator, EvaluationResult

    maps_root = Path(args.maps)
    if not maps_root.is_dir():
        raise MapsError(f"--maps {maps_root} is not a directory")
    for flag, limit in (("--fpr-limit", args.fpr_limit), ("--spro-fpr-limit", args.spro_fpr_limit)):
        if not 0.0 < limit <= 1.0:
            raise ZsadError(f"{flag} must be in (0, 1]; got {limit}")
    try:
        checksums = read_checksums(maps_root)  # written by eval.save_maps: each map read is checked
    except (OSError, ValueError) as err:
        raise MapsError(f"cannot read the checksums of --maps {maps_root}: {err}") from err
    truth = ground_truth(args, maps_root)
    gt_root = truth.root
    index = None
    if truth.dataset in ("mvtec", LAYOUT_DATASET):
        by_category = {c: [] for c in mvtec_categories(gt_root, truth.dataset)}  # one class at a time below
    else:
        by_category, index = indexed_test_images(
            truth.dataset, gt_root, truth.options, truth.split, truth.saved
        )
    available = list(by_category)
    if args.categories:
        unknown = [c for c in args.categories if c not in available]
        if unknown:
            raise DatasetLayoutError(f"classes {unknown} are not in --gt-root {gt_root} (it has {available})")
        categories = list(args.categories)
    else:  # the classes with maps (of those the run evaluated, where dataset.json names them)
        categories = [
            c
            for c in available
            if (truth.saved is None or c in truth.saved) and _has_maps(maps_root, c, by_category[c])
        ]
        if not categories:
            raise MapsError(
                f"--maps {maps_root} has no maps of any class in --gt-root ({', '.join(available)})"
            )

    image_scores = None
    if args.image_scores is not None:
        try:
            image_scores = read_image_scores(Path(args.image_scores))
        except (OSError, ValueError) as err:
            raise ZsadError(f"cannot read --image-scores {args.image_scores}: {err}") from err

    results = []
    resized: dict[str, int] = {}
    one_map_for_rows = 0  # images several categories hold, read from one map without a category
    for category in categories:
        items = by_category[category] or mvtec_test_images(gt_root, category)
        has_masks = index is None or index.category_has_masks(category)
        rules = index.region_rules.get(category) if index is not None else None
        groups = {
            g: i for i, g in enumerate(sorted({item.group for item in items if item.group is not None}))
        }
        evaluator = AnomalyEvaluator(
            [category],
            pixel_metrics=has_masks,
            fpr_limit=args.fpr_limit,
            pixel_score_dtype=torch.float32,
            keep_curves=False,  # only the metrics are written: no curve work
            sample_metrics=bool(groups),
            region_metrics=rules is not None,
            spro_fpr_limit=args.spro_fpr_limit,
        )
        for position, item in enumerate(items):
            found = find_map(maps_root, item)
            one_map_for_rows += int(found.stem != Path(item.relative).name)  # {stem} for {stem}@{category}
            amap = read_map(found, maps_root, checksums)
            mask = read_mask(item) if has_masks else None
            if mask is not None and amap.shape != mask.shape:
                key = f"{amap.shape[0]}x{amap.shape[1]} -> {mask.shape[0]}x{mask.shape[1]}"
                resized[key] = resized.get(key, 0) + 1
                amap = resize_map(amap, mask.shape)
            amap_t = torch.from_numpy(amap)
            # the row's own score first (an image in two rows), then one listed without its category
            if image_scores is None:
                score = amap_t.max().reshape(1)
            else:
                keys = ((row, name) for row in (category, None) for name in item.names)
                found = next((image_scores[key] for key in keys if key in image_scores), None)
                if found is None:
                    raise MapsError(f"--image-scores {args.image_scores} has no score for {item.relative}")
                score = torch.tensor([found], dtype=torch.float32)
            evaluator.update(
                torch.tensor([0]),
                torch.tensor([position]),
                score,
                torch.tensor([item.label]),
                amap_t[None] if mask is not None else None,
                torch.from_numpy(mask)[None] if mask is not None else None,
                group_ids=torch.tensor([groups.get(item.group, -1)]),
                **(regions_of(item, rules) if rules is not None and mask is not None else {}),
            )
        results.append(evaluator.compute())
        print(f"evaluated {category}: {len(items)} test images", file=sys.stderr)
    result = EvaluationResult.merge(results)
    notes = [f"resized {n} maps {k} (bilinear) to the ground-truth size" for k, n in sorted(resized.items())]
    if one_map_for_rows:  # maps of another tool, or of zsad before maps were saved per row
        notes.append(
            f"{one_map_for_rows} maps of images that several categories hold were read from one file for all of "
            "them ({stem}, no {stem}@{category}): a map that depends on the category was not saved per row"
        )
    result.notes.extend(truth.notes + notes)

    payload = {
        "dataset": truth.dataset,
        "gt_root": str(gt_root),
        "options": truth.options,
        "split": truth.split,
        "maps": str(maps_root),
        "image_score": "maximum of the anomaly map" if image_scores is None else str(args.image_scores),
        **result.to_dict(),
    }
    warnings = result.aupro_warnings()
    if warnings:
        payload["aupro_warnings"] = warnings
    text = json.dumps(payload, indent=2)
    print(result.format_table())
    for note in result.notes:
        print(f"note: {note}")
    for category, warning in warnings.items():
        print(f"warning: {category}: {warning}")
    for category, reasons in result.missing.items():
        for metric, reason in reasons.items():
            print(f"missing: {category} {metric}: {reason}")
    if args.output == "-":
        print(text)
    else:
        out = Path(args.output) if args.output else maps_root / "metrics.json"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ZsadError(f"cannot write {out}: {err}") from err
        atomic_write_text(out, text + "\n")  # a full disk: one line naming the file and the free space
        print(f"metrics: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.evaluate_maps", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ZsadError as err:
        if args.debug:
            raise
        print(f"evaluate-maps: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
