"""Training augmentation of a method's official dataset class, applied to the decoded image before the resize.

A method's spec declares a :class:`TrainAugmentation` per training dataset (``MethodSpec.train_augmentation``);
the runner hands it to the source's datamodule, which then serves its training split through
:class:`AugmentedDataset`. Each item draws from generators seeded from (run seed, epoch, sample index), so
an epoch's augmentations do not depend on the loader's workers, on how DDP shares the samples, or on where a
resumed run starts (docs/cluster.md, exact resume); their distribution is the official code's, not its draws.
Two parts, in the authors' order:

1. ``mosaic`` (:mod:`datamodules.mosaic`): with probability ``mosaic.rate`` the item becomes a 2x2 mosaic of
   four images of its category (VCP-CLIP, Bayes-PFL: anomalous ones, in their MVTec AD class only);
2. ``pipeline``: the albumentations pipeline of Qu et al.'s dataset classes in mode "train", always, on the
   image array and its mask: ``Rotate(30)``, ``RandomRotate90``, ``RandomBrightnessContrast``, ``GaussNoise``,
   ``OneOf(Blur(3), ColorJitter, GaussianBlur)``, each with p = 0.5 and albumentations' defaults otherwise.
   ``vcp_clip`` (VCP-CLIP's ``utils/dataset.py``) runs it on the RGB array; ``bayes_pfl`` (Bayes-PFL's
   ``MyDataset.Trans``) on the BGR array of their BMP copies. ``albumentations`` says whose semantics the
   transforms take: ``"1.3.1"`` (:mod:`datamodules.augment_compat`, pixel for pixel; Bayes-PFL pins it) or
   ``"1.4.24"``, the installed version's own (a 15-fold GaussNoise, a wider hue range, other rounding).

Each item seeds its own ``random.Random`` (the mosaic's draws, as their ``random.random()`` and
``random.choice``) and the pipeline's generators from (run seed, epoch, sample index): one Python and one
NumPy generator shared by all its transforms (:func:`seed_pipeline`), one stream as the official code's
global generators.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.dataset import AnomalyDataset
from datamodules.images import open_image, open_mask
from datamodules.mosaic import Mosaic, MosaicTiles, paste_records
from datamodules.resumable import derived_seed

PIPELINES = ("none", "vcp_clip", "bayes_pfl")
# whose semantics the pipeline's albumentations transforms take (datamodules/augment_compat.py for 1.3.1's)
ALBUMENTATIONS = ("1.3.1", "1.4.24")


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
    pipeline: str = "none"  # one of PIPELINES
    mosaic: Mosaic | None = None  # the 2x2 mosaic first (datamodules/mosaic.py); None: none
    albumentations: str = "1.3.1"  # one of ALBUMENTATIONS

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"augmentation pipeline must be one of {PIPELINES}, got {self.pipeline!r}")
        if self.albumentations not in ALBUMENTATIONS:
            raise ValueError(
                f"augmentation albumentations must be one of {ALBUMENTATIONS}, got {self.albumentations!r}"
            )

    @property
    def active(self) -> bool:
        return self.pipeline != "none" or (self.mosaic is not None and self.mosaic.rate > 0)


@functools.cache
def _pipeline(albumentations: str) -> Any:
    from datamodules.augment_compat import qu_et_al_pipeline

    return qu_et_al_pipeline(albumentations)


def vcp_clip_augment(
    image: Image.Image, mask: Image.Image, seed: int, albumentations: str = "1.3.1"
) -> tuple[Image.Image, Image.Image]:
    """VCP-CLIP's ``img_trans(mask=..., image=...)`` on ``np.array`` of the RGB image and the mask ("L")."""
    pipeline = _pipeline(albumentations)
    seed_pipeline(pipeline, seed)
    out = pipeline(image=np.array(image.convert("RGB")), mask=np.array(mask))
    return Image.fromarray(out["image"]), Image.fromarray(out["mask"].astype(np.uint8), mode="L")


def bayes_pfl_augment(
    image: Image.Image, mask: Image.Image, seed: int, albumentations: str = "1.3.1"
) -> tuple[Image.Image, Image.Image]:
    """Bayes-PFL's ``img_trans``, seeded (:func:`apply_bgr`)."""
    pipeline = _pipeline(albumentations)
    seed_pipeline(pipeline, seed)
    return apply_bgr(pipeline, image, mask)


def apply_bgr(pipeline: Any, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Bayes-PFL's ``MyDataset.Trans``: the pipeline on ``np.array(img)[:, :, ::-1]`` (BGR, which their
    ColorJitter's grey and hue steps then read as RGB) and the mask array, the image flipped back to RGB."""
    out = pipeline(
        image=np.ascontiguousarray(np.array(image.convert("RGB"))[:, :, ::-1]), mask=np.array(mask)
    )
    rgb = np.ascontiguousarray(out["image"][:, :, ::-1]).astype(np.uint8)
    return Image.fromarray(rgb), Image.fromarray(out["mask"].astype(np.uint8), mode="L")


AUGMENT = {"vcp_clip": vcp_clip_augment, "bayes_pfl": bayes_pfl_augment}


def seed_pipeline(pipeline: Any, seed: int) -> None:
    """One Python and one NumPy generator for all of ``pipeline``'s transforms, seeded by ``seed``: one stream,
    as the official code's global generators. (``Compose.set_random_seed`` gives every transform generators
    of the *same* seed: their identical first draws would apply all five transforms or none.)"""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


class AugmentedDataset(AnomalyDataset):
    """The training split with the method's augmentation. Items are asked for as ``(epoch, index)`` (the
    datamodule's sampler does so); a bare index means epoch 0."""

    takes_epoch = True  # datamodules.datamodule.resumable_train_loader asks for (epoch, index)

    def __init__(self, *args: Any, augmentation: TrainAugmentation, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.augmentation = augmentation
        self.seed = seed
        mosaic = augmentation.mosaic
        self.tiles = MosaicTiles(self.records) if mosaic is not None and mosaic.rate > 0 else None

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
        if (
            self.augmentation.pipeline != "none"
        ):  # their images are 8-bit RGB (VCP-CLIP) or BMP (Bayes-PFL) files
            augment = AUGMENT[self.augmentation.pipeline]
            image, mask = augment(image, mask, seed, self.augmentation.albumentations)
        item = self.item(i, *self.transform(image, mask), image_size=image.size)
        if label is not None:
            item["label"] = torch.tensor(label, dtype=torch.long)
        return item
