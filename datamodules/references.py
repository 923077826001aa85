"""Few-shot references: K normal images per category, drawn from a target's own normal training images.

Every parser indexes a dataset's normal training images as ``split="train"`` records with label 0
(MVTec AD's ``train/good``, VisA's ``train`` rows of ``split_csv/1cls.csv``, BTAD's ``train/ok``, ...); those
are the pool a few-shot evaluation draws its references from (:data:`REFERENCE_SPLIT`). A draw depends on
the experiment seed, the draw number and the category's name only (numpy's ``SeedSequence`` of the three:
one category's draw does not move when other categories are selected, and two draws never share a stream;
rows of one object, MVTec LOCO's logical and structural ones, use the object's name: ``DatasetIndex.row_objects``),
so every process of a DDP job draws the same files, and a run's recorded file lists (:meth:`ReferenceDraw.
record`) say which images each number saw.

A reference is never one of the evaluated test images: a drawn file whose path is a test image's, or whose
content is byte for byte a test image's, is skipped and the next one of the draw's permutation taken (the
count is recorded as ``skipped``); a category left with fewer than K usable images is refused.

``selection="sorted"`` (``protocol.selection``) takes the files in sorted order instead, draw d the
d-th block of K (the AnomalyDINO authors' ``sorted(os.listdir(train/good))[seed*K:(seed+1)*K]`` with their
seed = the draw number; the experiment seed then plays no part). ``selection="listed"`` takes the files a
list names (one list per draw: the draws the authors' code recorded, e.g. APRIL-GAN's ``k_shot.txt``), with
their repeats (their ``torch.randint`` draws with replacement); a listed test image is refused, not skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.errors import ConfigError, ZsadError
from datamodules.fingerprint import file_sha256, relative_name
from datamodules.images import open_image
from datamodules.index import DatasetIndex, SampleRecord

REFERENCE_SPLIT = "train"  # the parsers' split of normal training images
SELECTIONS = ("random", "sorted", "listed")  # protocol.selection


@dataclasses.dataclass(frozen=True)
class ReferenceDraw:
    """One draw of references for one target: per category the files, in drawn order."""

    draw: int
    seed: tuple[int, int]  # (experiment seed, draw), with the category's CRC-32 the draw's SeedSequence
    paths: dict[str, list[Path]]  # category -> image files
    root: Path  # the dataset root the recorded names are relative to
    skipped: dict[str, int]  # category -> drawn files skipped because they are test images
    # selection "listed": the lines of the draw's list that name no normal training image of this target
    # (another target's, or none: protocol.reference_plan refuses those)
    unmatched: tuple[str, ...] = ()

    def files(self) -> dict[str, list[str]]:
        """Per category the files below the dataset root (the names results.json records)."""
        return {c: [relative_name(p, self.root) for p in paths] for c, paths in self.paths.items()}

    def record(self) -> dict[str, Any]:
        """What results.json and the W&B config keep of the draw."""
        skipped = {c: n for c, n in self.skipped.items() if n}
        return {"files": self.files(), **({"skipped_test_images": skipped} if skipped else {})}


def category_stream(seed: int, draw: int, category: str) -> np.random.Generator:
    """The random stream of one category's draw: a function of the seed, the draw and the name only."""
    return np.random.default_rng([int(seed) % 2**64, int(draw), zlib.crc32(category.encode("utf-8"))])


def normal_training_records(index: DatasetIndex) -> dict[str, list[SampleRecord]]:
    """Per category the normal images of :data:`REFERENCE_SPLIT`, sorted by path (index order may follow
    a file listing's order, which differs between file systems)."""
    pools: dict[str, list[SampleRecord]] = collections.defaultdict(list)
    for record in index.records:
        if record.split == REFERENCE_SPLIT and record.label == 0:
            pools[record.category].append(record)
    return {c: sorted(records, key=lambda r: str(r.image_path)) for c, records in pools.items()}


class _TestImages:
    """Whether a file is one of the evaluated test images: the same path, or the same bytes (sizes are
    compared first; a file is hashed only when a test image has its size)."""

    def __init__(self, records: list[SampleRecord]) -> None:
        self.paths = {r.image_path.resolve() for r in records}
        self.by_size: dict[int, list[Path]] = collections.defaultdict(list)
        for path in self.paths:
            self.by_size[path.stat().st_size].append(path)
        self._hashes: dict[Path, str] = {}

    def _hash(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        return self._hashes[path]

    def __contains__(self, path: Path) -> bool:
        path = path.resolve()
        if path in self.paths:
            return True
        same_size = self.by_size.get(path.stat().st_size, [])
        return bool(same_size) and any(self._hash(path) == self._hash(other) for other in same_size)


def draw_references(
    index: DatasetIndex,
    test_index: DatasetIndex,
    categories: list[str],
    shots: int,
    seed: int,
    draws: int,
    target: str,
    selection: str = "random",
    listed: list[list[str]] | None = None,
) -> list[ReferenceDraw]:
    """``draws`` draws of ``shots`` distinct normal training images per category of ``categories``, none a
    test image of ``test_index``; a ConfigError (one line) when the target has no normal training images or
    a category has fewer than ``shots`` usable ones. ``selection``: "random" (seeded permutations),
    "sorted" (draw d: the sorted files from position d * shots on) or "listed" (draw d: the files the lines
    ``listed[d]`` name, :func:`listed_references`)."""
    if selection not in SELECTIONS:
        raise ConfigError(f"protocol.selection must be one of {SELECTIONS}, got {selection!r}")
    pools = normal_training_records(index)
    if not pools:
        raise ConfigError(
            f"target '{target}' has no normal training images (no '{REFERENCE_SPLIT}' split at {index.root}): "
            f"the few-shot protocol draws its references from them; evaluate it zero-shot (protocol.shots=0)"
        )
    tests = _TestImages(test_index.records)
    if selection == "listed":
        if listed is None or len(listed) != draws:
            raise ConfigError(f"protocol.selection=listed needs one list of references per draw ({draws})")
        return [
            listed_references(lines, pools, tests, categories, shots, seed, draw, Path(index.root), target)
            for draw, lines in enumerate(listed)
        ]
    out = []
    for draw in range(draws):
        paths, skipped = {}, {}
        for category in categories:
            pool = pools.get(category, [])
            if selection == "sorted":  # the pool is sorted by path (normal_training_records)
                order = np.arange(min(draw * shots, len(pool)), len(pool))
            else:
                stream = category_stream(seed, draw, index.row_objects.get(category, category))
                order = stream.permutation(len(pool))
            chosen: list[Path] = []
            skipped[category] = 0
            for position in order.tolist():
                if len(chosen) == shots:
                    break
                if pool[position].image_path in tests:
                    skipped[category] += 1
                else:
                    chosen.append(pool[position].image_path)
            if len(chosen) < shots:
                overlap = f" ({skipped[category]} of them are test images)" if skipped[category] else ""
                where = (
                    f" from position {draw * shots} on (protocol.selection=sorted)"
                    if selection == "sorted"
                    else ""
                )
                raise ConfigError(
                    f"target '{target}', category '{category}': {len(pool)} normal training images{overlap}, "
                    f"fewer than protocol.shots={shots} usable as references{where}"
                )
            paths[category] = chosen
        out.append(ReferenceDraw(draw, (int(seed), draw), paths, Path(index.root), skipped))
    return out


def _listed_path(line: str, names: dict[str, SampleRecord]) -> SampleRecord | None:
    """The normal training image a list's line names: its path below the dataset root, or a path ending with
    one (the authors' lists are relative to their own data folder, or absolute)."""
    parts = PurePosixPath(line.replace("\\", "/")).parts
    for start in range(len(parts)):
        found = names.get("/".join(parts[start:]))
        if found is not None:
            return found
    return None


def listed_references(
    lines: list[str],
    pools: dict[str, list[SampleRecord]],
    tests: _TestImages,
    categories: list[str],
    shots: int,
    seed: int,
    draw: int,
    root: Path,
    target: str,
) -> ReferenceDraw:
    """Draw ``draw`` as a list names it: per category its listed images in the list's order (repeats kept:
    the authors' draws with replacement); exactly ``shots`` per category, never a test image."""
    names = {relative_name(r.image_path, root): r for pool in pools.values() for r in pool}
    paths: dict[str, list[Path]] = {c: [] for c in categories}
    unmatched = []
    for line in (raw.strip() for raw in lines):
        if not line:
            continue
        record = _listed_path(line, names)
        if record is None:
            unmatched.append(line)
        elif record.category in paths:
            if record.image_path in tests:
                raise ConfigError(
                    f"target '{target}': the reference list of draw {draw} names {line}, one of the evaluated "
                    "test images (same file or bytes): a reference is never a test image"
                )
            paths[record.category].append(record.image_path)
    wrong = {c: len(p) for c, p in paths.items() if len(p) != shots}
    if wrong:
        counts = ", ".join(f"{c}: {n}" for c, n in wrong.items())
        raise ConfigError(
            f"target '{target}': the reference list of draw {draw} names {counts} normal training images of "
            f"these categories, not protocol.shots={shots} each"
        )
    skipped = dict.fromkeys(categories, 0)
    return ReferenceDraw(draw, (int(seed), draw), paths, root, skipped, tuple(unmatched))


class ReferenceImages:
    """One draw's references of one target, read with the target's own test transform (the method's
    preprocessing): what the runner hands a few-shot module (``ZeroShotModule.references``)."""

    def __init__(self, draw: ReferenceDraw, transform: Any) -> None:
        self.draw = draw
        self.transform = transform  # datamodules.transforms.ImageMaskTransform

    @property
    def categories(self) -> list[str]:
        return list(self.draw.paths)

    def images(self, category: str, angles: list[float] | None = None) -> torch.Tensor:
        """``[K, 3, S, S]``: the category's references, preprocessed as its test images; with ``angles``
        ``[K * len(angles), 3, S, S]``: each reference rotated by each angle before its preprocessing
        (:func:`rotations`), reference by reference. References of several sizes (a preprocessing that
        keeps each file's aspect) are refused here: :meth:`images_by_size` gives them to a method that
        encodes each size apart."""
        groups = self.images_by_size(category, angles)
        if len(groups) > 1:
            sizes = ", ".join("x".join(map(str, g.shape[-2:])) for g in groups)
            raise ZsadError(
                f"the references of category '{category}' have {len(groups)} sizes after preprocessing "
                f"({sizes}) and this method needs one: preprocess to a fixed image size"
            )
        return groups[0]

    def images_by_size(self, category: str, angles: list[float] | None = None) -> list[torch.Tensor]:
        """:meth:`images` as one ``[K_i, 3, H_i, W_i]`` stack per preprocessed size (in the order of each
        size's first reference; one stack when all have one size)."""
        images = [open_image(path) for path in self.draw.paths[category]]
        if angles is not None:
            # rotated from the image the test images' preprocessing starts from (16-bit files: its bit depth)
            images = [
                rotated for image in images for rotated in rotations(self.transform.eight_bit(image), angles)
            ]
        by_size: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for image in images:
            tensor = self.transform.image(image)
            by_size.setdefault(tuple(tensor.shape), []).append(tensor)
        return [torch.stack(group) for group in by_size.values()]


def rotations(image: Image.Image, angles: list[float]) -> list[Image.Image]:
    """The AnomalyDINO authors' reference augmentation (``src/utils.py`` ``augment_image``/``rotate_image``):
    the RGB image rotated counter-clockwise by each angle (degrees) about its centre ``(w / 2, h / 2)``,
    ``cv2.warpAffine`` with bilinear interpolation and cv2's default border (reflect-101), at its own size.
    (Their images come from ``cv2.imread(IMREAD_COLOR)``: the same RGB pixels as ``convert("RGB")`` for
    8-bit files.)"""
    import cv2

    array = np.asarray(image.convert("RGB"))
    height, width = array.shape[:2]
    centre = (width / 2, height / 2)
    out = []
    for angle in angles:
        matrix = cv2.getRotationMatrix2D(centre, float(angle), 1.0)
        rotated = cv2.warpAffine(
            array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_DEFAULT
        )
        out.append(Image.fromarray(rotated))
    return out
