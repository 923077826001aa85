"""Plain images without a dataset layout or ground truth (``zsad predict``): files, folders and globs.

:func:`collect_images` turns the user's inputs into a sorted list of image files (folders recursively)
and reads each file's header; :class:`ImageFolderDataModule` serves them through the benchmarks'
datamodule (the same method-specific preprocessing as ``zsad test``) as one category whose object word
is ``object_name``. An image that cannot be decoded is reported, not fatal: files whose header is
unreadable are set aside by :func:`collect_images`, and a file that fails while decoding comes out of
the loader as a placeholder with ``error`` set (its prediction is discarded).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.dataset import AnomalyDataset
from datamodules.errors import CorruptImageError, ZsadError
from datamodules.images import image_size
from datamodules.index import DatasetIndex, SampleRecord
from datamodules.transforms import ImagePreprocessing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DATASET_NAME = "images"
SPLIT = "test"


@dataclasses.dataclass
class ImageList:
    """Readable images with their original ``(height, width)``, and the inputs set aside with the reason."""

    images: list[Path]
    sizes: list[tuple[int, int]]
    unreadable: list[tuple[Path, str]]

    @functools.cached_property
    def root(self) -> Path:
        """The deepest folder holding every image: outputs mirror the images' paths below it."""
        return Path(os.path.commonpath([str(p.parent) for p in self.images]))


def _expand(text: str) -> list[Path]:
    path = Path(text).expanduser()
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if path.is_file():
        return [path]
    if glob.has_magic(text):
        return [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file()]
    return []


def collect_images(inputs: Sequence[str]) -> ImageList:
    """Every image of ``inputs`` once, sorted. An input that matches no image is an error (one line per
    input is more useful than an empty result); an unreadable file is set aside with the reason."""
    if not inputs:
        raise ZsadError("no --input given: pass image files, folders or globs")
    found: dict[Path, None] = {}
    for text in inputs:
        matches = [p for p in _expand(text) if not p.name.startswith(".")]
        if not matches:
            raise ZsadError(
                f"--input {text} matches no image (a file, a folder with {'/'.join(IMAGE_EXTENSIONS)} files, or a glob)"
            )
        for path in sorted(matches):
            found[path.resolve()] = None
    images, sizes, unreadable = [], [], []
    for path in sorted(found):
        try:
            width, height = image_size(path)
        except CorruptImageError as error:
            unreadable.append((path, str(error)))
            continue
        images.append(path)
        sizes.append((height, width))
    if not images:
        raise ZsadError(
            f"none of the {len(unreadable)} input files is a readable image, e.g. {unreadable[0][1]}"
        )
    return ImageList(images, sizes, unreadable)


def image_index(images: ImageList, category: str, object_name: str) -> DatasetIndex:
    """One category of unlabelled images (label 0, no masks) in the index format every method reads."""
    records = [SampleRecord(category, object_name, path, None, 0, "unknown", SPLIT) for path in images.images]
    return DatasetIndex(DATASET_NAME, images.root, records, has_masks=False, version="user images")


class ImageFolderDataset(AnomalyDataset):
    """Items as :class:`AnomalyDataset`'s plus ``original_size`` (H, W) and ``error`` ("" when decoded)."""

    def __init__(self, index: DatasetIndex, transform: Any, sizes: list[tuple[int, int]]) -> None:
        super().__init__(index, transform)
        self.sizes = sizes

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            item = super().__getitem__(i)
            item["error"] = ""
        except CorruptImageError as error:  # decoding failed past the header: keep the batch, drop the image
            size = self.transform.spec.image_size
            item = {
                "image": torch.zeros(3, size, size),
                # an empty mask of the file's size, resized as a decoded image's would be (masks at the file's
                # own size, mask_size=original, and short-side resizes need that size)
                "mask": self.transform.mask(Image.new("L", self.sizes[i][::-1])),
                "label": torch.tensor(0),
                "category_id": torch.tensor(0),
                "sample_id": torch.tensor(i),
                "has_mask": torch.tensor(False),
                "image_path": str(self.records[i].image_path),
                "error": str(error),
            }
        item["original_size"] = torch.tensor(self.sizes[i])
        return item


class ImageFolderDataModule(AnomalyDataModule):
    """The benchmarks' datamodule over user images: same transforms, batches and loader settings."""

    #: per-image random draws are keyed by the file's content: the inputs' common folder, below which their
    #: paths would be keys, changes with the other inputs of a call
    keys_by_content = True

    def __init__(
        self,
        images: ImageList,
        image_size: int,
        preprocessing: ImagePreprocessing | None = None,
        *,
        object_name: str = "object",
        domain: str = "industrial",
        batch_size: int = 8,
        num_workers: int | None = None,
    ) -> None:
        cfg = DataConfig(
            name=DATASET_NAME, root=str(images.root), eval_batch_size=batch_size, num_workers=num_workers
        )
        super().__init__(cfg, image_size, preprocessing)
        self.images = images
        self._index = image_index(images, object_name.strip().replace(" ", "_") or "object", object_name)
        self._domain = domain

    @property
    def full_index(self) -> DatasetIndex:  # type: ignore[override]
        return self._index

    @property
    def domain(self) -> str:
        return self._domain

    def _dataset(self, split: str, train: bool) -> AnomalyDataset:
        return ImageFolderDataset(self.split_index(split), self._transform(train=False), self.images.sizes)

    def predict_dataloader(self) -> Any:
        return self._loader(SPLIT, train=False)
