"""``eval.save_maps``: a run's test outputs on disk, in the form ``zsad evaluate-maps`` reads.

For each target, ``RUN/maps/{target}/`` receives one anomaly map per test image at the path of the image
below the dataset root (``{cls}/test/{defect}/{stem}.npy`` for MVTec AD layouts), ``image_scores.csv``
with the method's own image score of every image in every category that holds it, ``dataset.json``: which dataset, root, parser options,
split and data fingerprint the maps belong to (``zsad evaluate-maps`` takes its defaults from it), and last
``checksums.sha256``: the SHA-256 of every file above, in ``sha256sum`` format (``sha256sum -c
checksums.sha256`` in the folder checks them too). ``zsad evaluate-maps`` checks each file it reads
against it and refuses one that changed since. Scoring them again reproduces the run's metrics; at the
ground truth's full resolution it gives the numbers the MVTec AD evaluation script would.
An image that several categories hold (MVTec LOCO's good test images, in the logical and the structural row
of their object) has its map, mask and score row once per category, ``{stem}@{category}.npy``: its map
may depend on the row (MuSc's mutual scoring over the row's images, a per-category normalisation).
Beside each map of an image with pixel ground truth lies the mask it was scored against, at the map's size
(``{stem}.mask.png``, 0/255): maps and masks together are exactly the run's pixel inputs, what
``zsad report --bootstrap`` resamples.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.atomic_io import atomic_write, atomic_write_text
from datamodules.errors import ZsadError

IMAGE_SCORES_FILE = "image_scores.csv"
MASK_SUFFIX = ".mask.png"  # the evaluated mask beside a map: {name}.mask.png (never a map suffix)
IMAGE_SCORES_COLUMNS = ("image", "category", "label", "score")
DATASET_FILE = "dataset.json"
CHECKSUMS_FILE = "checksums.sha256"


class ChecksumMismatchError(ZsadError, ValueError):
    """A file of a maps folder differs from what ``eval.save_maps`` wrote (its ``checksums.sha256``)."""


class MapWriter(Callback):
    """Writes the maps batch by batch (each DDP process its own samples; a file is replaced atomically, so a
    padding duplicate may write it twice) and, at the end, the image scores of all processes from rank 0.

    Maps are stored in the evaluator's storage type (``eval.pixel_score_dtype``: float32 by default,
    float16 opt-in), i.e. exactly the values the run's metrics were computed on.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        # (image, category) -> (category, label, score or score parts, image file): an image that two
        # categories hold (MVTec LOCO's good images, in its logical and structural rows) has a row in each
        self.rows: dict[tuple[str, str], tuple[str, int, Any, str]] = {}
        self.checksums: dict[str, str] = {}  # map file below out_dir -> SHA-256 of what was written
        self.shared: set[Path] = set()

    def on_test_epoch_start(self, trainer: L.Trainer, module: Any) -> None:
        self.rows, self.checksums = {}, {}
        self.shared = trainer.datamodule.test_index.shared_images()  # saved once per category holding them

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict):
            return
        datamodule = trainer.datamodule
        root = Path(datamodule.test_index.root)
        maps = outputs.get("anomaly_maps")
        if maps is not None:
            dtype = np.float16 if module.eval_cfg.pixel_score_torch_dtype == torch.float16 else np.float32
            maps = maps.detach().float().cpu().numpy().astype(dtype)
        # under an image-score rule the parts, combined per category at the end (category_scores.py)
        parts = outputs.get("image_score_parts")
        scores = (parts if parts is not None else outputs["image_scores"]).detach().double().cpu().tolist()
        category_ids = batch["category_id"].tolist()
        has_mask = batch["has_mask"].reshape(-1).tolist() if "has_mask" in batch else [False] * len(scores)
        for i, (path, category_id) in enumerate(zip(batch["image_path"], category_ids, strict=True)):
            category = datamodule.categories[category_id]
            name = map_name(Path(path), root, category, shared=Path(path) in self.shared)
            self.rows[(name, category)] = (category, int(batch["label"][i]), scores[i], str(path))
            if maps is not None:
                self.checksums[f"{name}.npy"] = save_atomically(self.out_dir / f"{name}.npy", maps[i])
                if has_mask[i]:  # binarised as the evaluator does (> 0), at the map's size
                    self.checksums[f"{name}{MASK_SUFFIX}"] = save_mask(
                        self.out_dir / f"{name}{MASK_SUFFIX}", batch["mask"][i].detach().cpu().numpy() > 0
                    )

    def on_test_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        rows, checksums = self.rows, self.checksums
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (rows, checksums))
            rows = {key: row for part, _ in gathered for key, row in part.items()}
            checksums = {key: digest for _, part in gathered for key, digest in part.items()}
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        rows = _combined(
            rows, module.image_score_rule(), datamodule.categories, datamodule.category_populations
        )
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(IMAGE_SCORES_COLUMNS)
        for image, category in sorted(rows):
            _, label, score = rows[image, category]
            writer.writerow([image, category, label, repr(score)])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        checksums[IMAGE_SCORES_FILE] = write_text_file(self.out_dir / IMAGE_SCORES_FILE, text.getvalue())
        data_cfg = datamodule.cfg
        record = {
            "dataset": data_cfg.name,
            "root": str(datamodule.test_index.root),
            "options": {key: str(value) for key, value in (data_cfg.options or {}).items()},
            "version": datamodule.test_index.version,
            "split": data_cfg.test_split,
            "categories": list(datamodule.categories),
            "data_fingerprint": datamodule.test_fingerprint_summary,
        }
        checksums[DATASET_FILE] = write_text_file(
            self.out_dir / DATASET_FILE, json.dumps(record, indent=2) + "\n"
        )
        write_checksums(self.out_dir, checksums)


def _combined(
    rows: dict[tuple[str, str], tuple[str, int, Any, str]],
    rule: Any,
    categories: list[str],
    populations: list[int],
) -> dict[tuple[str, str], tuple[str, int, float]]:
    """The rows with each image's score; under an image-score rule from the parts of its population's images
    (category_scores.combined_scores: MVTec LOCO's rows of an object together, a shared image once), as
    the evaluator combines them."""
    if rule is None:
        return {key: (category, label, float(score)) for key, (category, label, score, _) in rows.items()}
    from lightning_modules.metrics.category_scores import combined_scores

    keys = sorted(rows)
    files: dict[str, int] = {}
    scores = combined_scores(
        rule,
        [categories.index(rows[key][0]) for key in keys],
        torch.tensor([rows[key][2] for key in keys], dtype=torch.float64),
        populations,
        [files.setdefault(rows[key][3], len(files)) for key in keys],
    )
    return {key: (rows[key][0], rows[key][1], float(s)) for key, s in zip(keys, scores, strict=True)}


def map_name(image: Path, root: Path, category: str, shared: bool = False) -> str:
    """Where an image's map goes below the maps folder, without suffix: the image's path below the dataset
    root (``{cls}/test/{defect}/{stem}`` for MVTec AD), or ``{category}/{stem}`` for an image outside it
    (a parser that follows a file list); ``shared`` (an image several categories hold:
    ``DatasetIndex.shared_images``) adds ``@{category}``, one map per category. ``zsad evaluate-maps``
    looks the maps up by the same rule."""
    try:
        name = image.relative_to(root).with_suffix("").as_posix()
    except ValueError:
        name = f"{category}/{image.stem}"
    return f"{name}@{category}" if shared else name


def save_atomically(file: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` atomically; returns the SHA-256 of the bytes written."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda handle: handle.write(data))
    return hashlib.sha256(data).hexdigest()


def write_text_file(file: Path, text: str) -> str:
    """:func:`atomic_write_text`; returns the SHA-256 of what was written."""
    atomic_write_text(file, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_checksums(folder: Path, checksums: dict[str, str]) -> None:
    """``checksums.sha256`` of ``folder`` in ``sha256sum`` format (``HEX  NAME``, names below ``folder``)."""
    lines = [f"{checksums[name]}  {name}\n" for name in sorted(checksums)]
    atomic_write_text(folder / CHECKSUMS_FILE, "".join(lines))


def read_checksums(folder: Path) -> dict[str, str] | None:
    """``checksums.sha256`` of ``folder`` as {name below it: SHA-256}, None when it has none."""
    file = Path(folder) / CHECKSUMS_FILE
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    entries = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"{file}: not a sha256sum line: {line[:80]!r}")
        entries[name] = digest
    return entries


def checked_bytes(file: Path, folder: Path, checksums: dict[str, str] | None) -> bytes:
    """The bytes of ``file`` (in ``folder``), after checking them against ``checksums`` when it lists the
    file; a mismatch raises :class:`ChecksumMismatchError` saying that the file changed since."""
    data = Path(file).read_bytes()
    name = Path(file).relative_to(folder).as_posix() if checksums else ""
    expected = checksums.get(name) if checksums else None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ChecksumMismatchError(
            f"{file} does not match its SHA-256 in {Path(folder) / CHECKSUMS_FILE}: it was changed or damaged "
            "after eval.save_maps wrote it; re-copy the maps folder or write the maps again"
        )
    return data


def save_mask(file: Path, mask: np.ndarray) -> str:
    """A bool mask as a 1-bit PNG (a few hundred bytes), written atomically; returns its SHA-256."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.squeeze(mask).astype(np.uint8) * 255).convert("1").save(buffer, format="PNG")
    data = buffer.getvalue()
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda handle: handle.write(data))
    return hashlib.sha256(data).hexdigest()


def read_image_scores(path: Path) -> dict[tuple[str | None, str], float]:
    """``image_scores.csv`` as {(category, image path below the dataset root, without suffix): score}, and
    {(None, image): score} for a lookup without the category (a file without a category column, or one that
    names other categories), checked against the ``checksums.sha256`` beside it when that lists it. An image
    that two categories hold (MVTec LOCO's good images) has a score per category."""
    path = Path(path)
    text = checked_bytes(path, path.parent, read_checksums(path.parent)).decode("utf-8")
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"image", "score"} <= set(reader.fieldnames):
            raise ValueError(f"{path} needs the columns 'image' and 'score' (has {reader.fieldnames})")
        scores: dict[tuple[str | None, str], float] = {}
        for row in reader:
            score = float(row["score"])
            scores[(None, row["image"])] = score
            if row.get("category"):
                scores[(row["category"], row["image"])] = score
        return scores


def read_dataset_record(maps_dir: Path) -> dict[str, Any] | None:
    """The ``dataset.json`` that ``eval.save_maps`` wrote in ``maps_dir``, or None (maps from elsewhere)."""
    file = Path(maps_dir) / DATASET_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(checked_bytes(file, Path(maps_dir), read_checksums(maps_dir)))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {file}: {err}") from err
    if not isinstance(record, dict) or not {"dataset", "root", "options", "split"} <= set(record):
        raise ValueError(f"{file} is not a dataset record of eval.save_maps (dataset, root, options, split)")
    return record
