"""Training augmentation of a method's official dataset class, applied to the decoded image before the resize.

A method's spec declares a :class:`TrainAugmentation` per training dataset (``MethodSpec.train_augmentation``);
the runner hands it to the source's datamodule, which then serves its training split through
:class:`AugmentedDataset`. Each item draws from generators seeded from (run seed, epoch, sample index), so
an epoch's augmentations do not depend on the loader's workers, on how DDP shares the samples, or on where a
resumed run starts (docs/cluster.md, exact resume); their distribution is the official code's, not its draws.
Two parts, in the authors' order:

1. ``mosaic`` (:mod:`datamodules.mosaic`): with probability ``mosaic.rate`` the item becomes a 2x2 mosaic of
   four images of its category (VCP-CLIP: anomalous ones, in their MVTec AD class only);
2. ``pipeline="vcp_clip"``: VCP-CLIP's datasets in mode "train" (``utils/dataset.py``), always: their
   albumentations pipeline on the RGB array and its mask: ``Rotate(30)``, ``RandomRotate90``,
   ``RandomBrightnessContrast``, ``GaussNoise``, ``OneOf(Blur(3), ColorJitter, GaussianBlur)``, each with
   p = 0.5, with the defaults of albumentations 1.3.x-1.4.2 (current when their code was written; the same
   first author's Bayes-PFL pins 1.3.1): the same in 1.4.24, which zsad pins, except ``GaussNoise`` (a standard deviation of
   20-44 % of 255 instead of a variance in [10, 50]) and ``ColorJitter``'s hue (+-0.5 instead of +-0.2), which
   zsad passes explicitly. **Reconstruction**: their albumentations version is not recorded; what 1.4.24
   computes differently under the same parameters is listed in docs/methods.md#vcp-clip.

Each item seeds its own ``random.Random`` (the mosaic's draws, as their ``random.random()`` and
``random.choice``) and the pipeline's generators from (run seed, epoch, sample index): one Python and one
NumPy generator shared by all its transforms (:func:`seed_pipeline`), one stream as the official code's
global generators.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.dataset import AnomalyDataset
from datamodules.images import open_image, open_mask
from datamodules.mosaic import Mosaic, MosaicTiles, paste_records
from datamodules.resumable import derived_seed

PIPELINES = ("none", "vcp_clip")
# Defaults of the vcp_clip pipeline's transforms (their code passes none): "albumentations_1.4.2", those of
# albumentations 1.3.x-1.4.2 (GaussNoise: a variance uniform in [10, 50] pixel values squared; ColorJitter: hue
# in [-0.2, 0.2]), or "albumentations_1.4.24", that version's (GaussNoise: a standard deviation uniform in
# 20-44 % of 255; ColorJitter: hue in [-0.5, 0.5]): what their unpinned code gets with it
DEFAULTS = ("albumentations_1.4.2", "albumentations_1.4.24")


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
    pipeline: str = "none"  # one of PIPELINES
    mosaic: Mosaic | None = None  # the 2x2 mosaic first (datamodules/mosaic.py); None: none
    defaults: str = "albumentations_1.4.2"  # one of DEFAULTS: whose transform defaults the pipeline takes

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"augmentation pipeline must be one of {PIPELINES}, got {self.pipeline!r}")
        if self.defaults not in DEFAULTS:
            raise ValueError(f"augmentation defaults must be one of {DEFAULTS}, got {self.defaults!r}")

    @property
    def active(self) -> bool:
        return self.pipeline != "none" or (self.mosaic is not None and self.mosaic.rate > 0)


@functools.cache
def _vcp_clip_pipeline(defaults: str = "albumentations_1.4.2") -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
    import albumentations as A

    if defaults == "albumentations_1.4.24":
        gauss_noise, color_jitter = A.GaussNoise(p=0.5), A.ColorJitter(p=0.5)
    else:
        with warnings.catch_warnings():  # var_limit is deprecated in 1.4.24, and the only way to its meaning
            warnings.simplefilter("ignore", DeprecationWarning)
            # 1.4.2's GaussNoise(var_limit=(10, 50)) in pixel values: 1.4.24 takes it normalised by 255^2
            gauss_noise = A.GaussNoise(var_limit=(10 / 255**2, 50 / 255**2), p=0.5)
        color_jitter = A.ColorJitter(hue=0.2, p=0.5)  # 1.4.2's hue range; brightness etc. as in 1.4.24
    return A.Compose(
        [
            A.Rotate(limit=30, p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(p=0.5),
            gauss_noise,
            A.OneOf([A.Blur(blur_limit=3, p=0.5), color_jitter, A.GaussianBlur(p=0.5)], p=0.5),
        ],
        is_check_shapes=False,
    )


def vcp_clip_augment(
    image: Image.Image, mask: Image.Image, seed: int, defaults: str = "albumentations_1.4.2"
) -> tuple[Image.Image, Image.Image]:
    """Their ``img_trans(mask=..., image=...)`` on ``np.array`` of the image and mask (mode "L")."""
    pipeline = _vcp_clip_pipeline(defaults)
    seed_pipeline(pipeline, seed)
    out = pipeline(image=np.array(image), mask=np.array(mask))
    return Image.fromarray(out["image"]), Image.fromarray(out["mask"].astype(np.uint8), mode="L")


def seed_pipeline(pipeline: Any, seed: int) -> None:
    """One Python and one NumPy generator for all of ``pipeline``'s transforms, seeded by ``seed``: one stream,
    as the official code's global generators. (``Compose.set_random_seed`` gives every transform generators
    of the *same* seed: their identical first draws would apply all five transforms or none.)"""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


class AugmentedDataset(AnomalyDataset):
    """The training split with the method's augmentation. Items are asked for as ``(epoch, index)`` (the
    datamodule's sampler does so); a bare index means epoch 0."""

    def __init__(self, *args: Any, augmentation: TrainAugmentation, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.augmentation = augmentation
        self.seed = seed
        mosaic = augmentation.mosaic
        self.tiles = MosaicTiles(self.records, mosaic) if mosaic is not None and mosaic.rate > 0 else None

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        seed = derived_seed(self.seed, epoch, i, "augment")
        draw = random.Random(seed)
        record = self.records[i]
        label = None
        mosaic = self.augmentation.mosaic
        positions = None
        if self.tiles is not None and draw.random() < mosaic.rate:
            positions = self.tiles.draw(record.category, draw)
        if positions is not None:
            tiles = [self.records[p] for p in positions]
            image, mask = paste_records(tiles)
            if mosaic.label == "any_tile":
                label = max(tile.label for tile in tiles)
        else:
            image = open_image(record.image_path)
            mask = open_mask(record.mask_path) if record.mask_path is not None else Image.new("L", image.size)
        if self.augmentation.pipeline == "vcp_clip":  # their images are 8-bit RGB files (make_dataset_new.py)
            image, mask = vcp_clip_augment(image.convert("RGB"), mask, seed, self.augmentation.defaults)
        item = self.item(i, *self.transform(image, mask), image_size=image.size)
        if label is not None:
            item["label"] = torch.tensor(label, dtype=torch.long)
        return item
