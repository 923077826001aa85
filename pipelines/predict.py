"""``zsad predict``: a configured method on any images, with maps, scores, thresholded masks and overlays.

    zsad predict CONFIG [checkpoint=RUN/checkpoints/last.ckpt] [key=value ...] --input PATH... --out DIR
        [--image-threshold T] [--pixel-threshold T] | [--threshold-from RUN [--threshold-category T/C]]
        | [--normal-dir DIR --fpr 0.01] [--references DIR]

Per readable input image (below ``--out``, mirroring the images' paths below their common folder):
``maps/{name}.tiff`` (float32) and/or ``.npy`` (``--map-format``), the anomaly map at the image's own
resolution (the model's map at its input size, resized bilinearly); ``overlays/{name}.png``, the map as a
heatmap over the image, and ``panels/{name}.png`` (image | heatmap with colorbar | thresholded region),
both in one colour range for the run (:mod:`pipelines.predict_pictures`); ``masks/{name}.png`` (0/255,
map >= the pixel threshold, when there is one).
With ``--submission mvtec_ad2`` the maps are float16 ``anomaly_images/{name}.tiff`` and the masks
``anomaly_images_thresholded/{name}.png``, the form MVTec AD 2's evaluation server takes
(:mod:`pipelines.submission`).
``predictions.csv`` (path, score, label; label empty without an image threshold), ``prediction.json``
(what was run, the thresholds and where they came from) and ``unreadable.csv`` for inputs that could not
be decoded (named on stderr and skipped: one bad file never costs the other predictions).
A few-shot method (WinCLIP+, VAND k-shot, AnomalyDINO) takes ``--references DIR``: every image below DIR is
a normal reference of the object (recorded in ``prediction.json``); AnomalyDINO, which has no zero-shot mode,
needs it.

Runs like ``zsad test``: the same trainer/strategy config, batched; under DDP every image is predicted
exactly once (Lightning's unrepeated sampler for prediction), its files are written by the process that
predicted it, and rank 0 gathers the rows of ``predictions.csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from datamodules.errors import ConfigError, ZsadError
from datamodules.image_folder import ImageFolderDataModule, ImageList, collect_images
from lightning_modules.method_spec import MethodSpec
from lightning_modules.registry import get_method
from pipelines import submission
from pipelines.predict_thresholds import (
    NORMAL_THRESHOLDS_FILE,
    NormalStatistics,
    Thresholds,
    thresholds_from_run,
)
from pipelines.prediction_writer import PREDICTIONS_FILE, UNREADABLE_FILE, PredictionWriter
from pipelines.protocol import refuse_without_references
from pipelines.run_state import global_rank

MAP_FORMATS = ("tiff", "npy", "both")
#: The folders ``zsad predict`` writes per image (maps, masks, pictures; --submission's two)
PREDICTION_FOLDERS = ("maps", "masks", "overlays", "panels", submission.MAPS_DIR, submission.MASKS_DIR)


@dataclasses.dataclass
class PredictOptions:
    inputs: list[str]
    out: Path
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    threshold_from: Path | None = None
    threshold_category: str | None = None
    normal_dir: Path | None = None
    references: Path | None = None  # few-shot methods: normal images of the object (every image below)
    fpr: float = 0.01
    map_format: str = "tiff"
    object_name: str = "object"
    domain: str = "industrial"
    batch_size: int = 8
    num_workers: int | None = None
    overlay_range: tuple[float, float] | None = None  # None: the run's maps' min and max
    submission: str | None = None  # "mvtec_ad2": MVTec's evaluation-server form (pipelines/submission.py)


@dataclasses.dataclass
class PredictOutcome:
    out: Path
    n_predicted: int | None  # None in the processes other than global rank 0
    unreadable: list[tuple[str, str]]
    thresholds: Thresholds


# --- the job -----------------------------------------------------------------------------------------
def _datamodule(
    images: ImageList, cfg: Any, spec: MethodSpec, options: PredictOptions
) -> ImageFolderDataModule:
    """The images at the method's input size, with its authors' preprocessing for images of no benchmark."""
    return ImageFolderDataModule(
        images,
        spec.image_size(cfg.method),
        spec.preprocessing(cfg.method, None),
        object_name=options.object_name,
        domain=options.domain,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
    )


def _reference_images(options: PredictOptions, cfg: Any, spec: MethodSpec) -> Any:
    """``--references DIR``: every readable image below DIR as the object's references, preprocessed as the
    inputs (the same K images for every process); None without the option."""
    if options.references is None:
        return None
    from datamodules.references import ReferenceDraw

    found = collect_images([str(options.references)])
    if not found.images:
        raise ConfigError(f"--references {options.references}: no readable image there")
    datamodule = _datamodule(found, cfg, spec, options)
    categories = datamodule.categories
    draw = ReferenceDraw(
        0, (0, 0), {c: list(found.images) for c in categories}, found.root, {c: 0 for c in categories}
    )
    return datamodule.reference_images(draw)


def _run(
    cfg: Any, spec: MethodSpec, module: Any, datamodule: ImageFolderDataModule, out: Path, callback: Callback
) -> None:
    from pipelines.runner import make_trainer, refuse_inexact_ddp  # the run's progress bar, its refusals

    inference_mode = not spec.needs_grad_at_test(cfg.method)
    trainer = make_trainer(cfg, out, [], training=False, inference_mode=inference_mode, callbacks=[callback])
    refuse_inexact_ddp(cfg, spec, trainer.world_size)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)


def check_options(options: PredictOptions) -> None:
    """Contradictory or incomplete threshold choices are one-line errors before any model is built."""
    chosen = [
        name
        for name, given in (
            (
                "--image-threshold/--pixel-threshold",
                options.image_threshold is not None or options.pixel_threshold is not None,
            ),
            ("--threshold-from", options.threshold_from is not None),
            ("--normal-dir", options.normal_dir is not None),
        )
        if given
    ]
    if len(chosen) > 1:
        raise ConfigError(f"choose one source of thresholds, not {' and '.join(chosen)}")
    if options.threshold_category and options.threshold_from is None:
        raise ConfigError("--threshold-category needs --threshold-from RUN")
    if not 0.0 <= options.fpr < 1.0:
        raise ConfigError(f"--fpr must be in [0, 1), got {options.fpr}")
    if options.map_format not in MAP_FORMATS:
        raise ConfigError(f"--map-format must be one of {MAP_FORMATS}")
    if options.submission is not None and options.submission not in submission.SUBMISSIONS:
        raise ConfigError(f"--submission must be one of {submission.SUBMISSIONS}")
    if options.submission is not None and options.map_format != "tiff":
        raise ConfigError("--submission writes the server's float16 TIFF maps: leave --map-format at tiff")
    if (options.out / PREDICTIONS_FILE).exists():
        raise ZsadError(
            f"{options.out} already holds predictions ({PREDICTIONS_FILE}); choose another --out or remove it"
        )
    # an interrupted prediction's files would stay beside the new ones, unlisted in checksums.sha256
    left = [d for d in PREDICTION_FOLDERS if (options.out / d).is_dir() and any((options.out / d).iterdir())]
    if left:
        raise ZsadError(
            f"{options.out} holds files of an unfinished prediction ({', '.join(f'{d}/' for d in left)}; no "
            f"{PREDICTIONS_FILE}); choose another --out or remove them"
        )


def predict(cfg: Any, options: PredictOptions) -> PredictOutcome:
    from pipelines.runner import evaluation_module, planned_processes, refuse_inexact_ddp

    spec = get_method(cfg.method.name)
    if options.references is None:
        refuse_without_references(spec, "give `zsad predict` normal images of the object: --references DIR")
    elif not spec.few_shot:
        raise ConfigError(f"method '{spec.name}' has no few-shot mode: it takes no --references")
    check_options(options)
    refuse_inexact_ddp(cfg, spec, planned_processes(cfg))
    module, checkpoint = evaluation_module(
        cfg, spec
    )  # an unusable checkpoint is refused before inputs are read
    images = collect_images(options.inputs)
    if options.submission is not None:
        submission.check_inputs(images.images)
    for _, error in images.unreadable if global_rank() == 0 else []:
        print(f"zsad: skipped unreadable image: {error}", file=sys.stderr)
    out = options.out
    module.run_dir = out  # the folder this job writes (a method's run files, e.g. CMG's relevance cache)
    (out / UNREADABLE_FILE).unlink(missing_ok=True)  # never report a previous attempt's files
    thresholds = Thresholds(
        options.image_threshold,
        options.pixel_threshold,
        "values given"
        if options.image_threshold is not None or options.pixel_threshold is not None
        else "none",
    )
    if options.threshold_from is not None:
        thresholds = thresholds_from_run(options.threshold_from, options.threshold_category, images.images)
    references = _reference_images(options, cfg, spec)
    module.references = references  # None: zero-shot
    if options.normal_dir is not None:
        normals = collect_images([str(options.normal_dir)])
        statistics = NormalStatistics(options.fpr, out, f"normal images in {options.normal_dir}")
        _run(cfg, spec, module, _datamodule(normals, cfg, spec, options), out, statistics)
        # ddp_spawn: the statistics were computed in the spawned processes; rank 0 left them in a file
        thresholds = statistics.thresholds or Thresholds(
            **json.loads((out / NORMAL_THRESHOLDS_FILE).read_text())
        )
    for warning in thresholds.warnings if global_rank() == 0 else []:
        print(f"zsad: warning: {warning}", file=sys.stderr)
    record = {
        "experiment": cfg.name,
        "method": cfg.method.name,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "inputs": list(options.inputs),
        "root": str(images.root),
        "image_size": spec.image_size(cfg.method),
        "preprocessing": dataclasses.asdict(spec.preprocessing(cfg.method, None)),
        "object_name": options.object_name,
        "references": [str(p) for p in references.draw.paths[references.categories[0]]]
        if references
        else None,
        "thresholds": {k: v for k, v in dataclasses.asdict(thresholds).items() if k != "warnings"},
        "map_format": options.map_format,
        "submission": options.submission,
    }
    writer = PredictionWriter(out, images, thresholds, options, record)
    _run(cfg, spec, module, _datamodule(images, cfg, spec, options), out, writer)
    if global_rank() != 0:  # torchrun/srun: rank 0 may still be writing; it reports for everyone
        return PredictOutcome(out, None, [], thresholds)
    # Read back what rank 0 wrote (under ddp_spawn it ran in another process).
    with open(out / PREDICTIONS_FILE, newline="") as handle:
        n_predicted = sum(1 for _ in csv.DictReader(handle))
    unreadable: list[tuple[str, str]] = []
    if (out / UNREADABLE_FILE).is_file():
        with open(out / UNREADABLE_FILE, newline="") as handle:
            unreadable = [(row["path"], row["error"]) for row in csv.DictReader(handle)]
    return PredictOutcome(out, n_predicted, unreadable, thresholds)


# --- command line ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment config: a name under configs/experiment/ or a .yaml path")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides, e.g. checkpoint=RUN/checkpoints/last.ckpt (before --input, which takes every following word)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        action="extend",
        metavar="PATH",
        help="image files, folders (recursively) or globs",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (maps/, overlays/, masks/, predictions.csv)"
    )
    parser.add_argument("--image-threshold", type=float, help="score >= T labels an image anomalous")
    parser.add_argument("--pixel-threshold", type=float, help="map >= T marks a pixel anomalous (masks/)")
    parser.add_argument(
        "--threshold-from",
        type=Path,
        metavar="RUN",
        help="the F1-optimal thresholds an evaluation run stored in results.json",
    )
    parser.add_argument(
        "--threshold-category",
        metavar="TARGET/CATEGORY",
        help="which of the run's categories (when it has several)",
    )
    parser.add_argument(
        "--references",
        type=Path,
        metavar="DIR",
        help="few-shot methods (WinCLIP+, VAND k-shot, AnomalyDINO): normal images of the object, its references",
    )
    parser.add_argument(
        "--normal-dir",
        type=Path,
        metavar="DIR",
        help="normal images: thresholds at --fpr of their scores and pixels",
    )
    parser.add_argument(
        "--fpr", type=float, default=0.01, help="false-positive rate on --normal-dir (default 0.01)"
    )
    parser.add_argument(
        "--map-format",
        choices=MAP_FORMATS,
        default="tiff",
        help="anomaly map files: float32 .tiff, .npy or both",
    )
    parser.add_argument(
        "--object",
        dest="object_name",
        default="object",
        metavar="WORD",
        help="object word for methods whose prompts name the object (default 'object')",
    )
    parser.add_argument(
        "--domain",
        choices=("industrial", "medical"),
        default="industrial",
        help="prompt templates of methods that distinguish them",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, help="loader processes (default: from the CPU cores)")
    parser.add_argument(
        "--submission",
        choices=submission.SUBMISSIONS,
        help="write maps (and thresholded masks) in the form an evaluation server takes: mvtec_ad2 = MVTec AD 2's "
        "private test sets, --input ROOT/*/test_private ROOT/*/test_private_mixed (docs/datasets.md)",
    )
    parser.add_argument(
        "--overlay-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="map values the heatmap colours span (default: the lowest and highest value of all this run's maps)",
    )


def run(args: argparse.Namespace) -> int:
    from pipelines.config import compose, to_object

    cfg = to_object(compose(args.config, args.overrides))
    options = PredictOptions(
        inputs=list(args.input),
        out=args.out,
        image_threshold=args.image_threshold,
        pixel_threshold=args.pixel_threshold,
        threshold_from=args.threshold_from,
        threshold_category=args.threshold_category,
        normal_dir=args.normal_dir,
        references=args.references,
        fpr=args.fpr,
        map_format=args.map_format,
        object_name=args.object_name,
        domain=args.domain,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        overlay_range=None if args.overlay_range is None else tuple(args.overlay_range),
        submission=args.submission,
    )
    outcome = predict(cfg, options)
    if outcome.n_predicted is None:  # not global rank 0
        return 0
    print(f"predicted {outcome.n_predicted} images: {outcome.out / PREDICTIONS_FILE}")
    print(
        f"thresholds: image {outcome.thresholds.image}, pixel {outcome.thresholds.pixel} ({outcome.thresholds.source})"
    )
    if outcome.unreadable:
        print(f"{len(outcome.unreadable)} unreadable inputs skipped: {outcome.out / 'unreadable.csv'}")
    if options.submission is not None:
        for line in submission.incomplete_splits(submission.written_names(outcome.out)):
            print(f"incomplete for MVTec's server: {line}")
        print(
            f"anomaly images: {outcome.out / submission.MAPS_DIR} (MVTec's check_and_prepare_data_for_upload.py packs them)"
        )
    return 0
