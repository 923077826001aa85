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

``aa_clip`` (AA-CLIP's ``BaseDataset``) is not an albumentations pipeline: from epoch ``color_from_epoch``
(their stage 2) ``RandomApply(ColorJitter(brightness / contrast / saturation = 0.5), p=0.7)`` on the image
before the resize, then on the preprocessed (normalised) image and mask together, in every epoch:
``RandomApply(RandomRotation(30 degrees), p=0.5)``, ``RandomApply(RandomAffine(translate=(0.15, 0.15)),
p=0.5)``, horizontal and vertical flips with p = 0.5: torchvision's tensor transforms, nearest
interpolation, fill 0 in the normalised space (:func:`aa_clip_color`, :func:`aa_clip_geometry`).

Each item seeds its own ``random.Random`` (the mosaic's draws, as their ``random.random()`` and
``random.choice``) and the pipeline's generators from (run seed, epoch, sample index): one Python and one
NumPy generator shared by all its transforms (:func:`seed_pipeline`), one stream as the official code's
global generators.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.dataset import AnomalyDataset
from datamodules.images import open_image, open_mask
from datamodules.mosaic import Mosaic, MosaicTiles, paste_records
from datamodules.resumable import derived_seed

PIPELINES = ("none", "vcp_clip", "bayes_pfl", "aa_clip")
# whose semantics the pipeline's albumentations transforms take (datamodules/augment_compat.py for 1.3.1's)
ALBUMENTATIONS = ("1.3.1", "1.4.24")


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
    pipeline: str = "none"  # one of PIPELINES
    mosaic: Mosaic | None = None  # the 2x2 mosaic first (datamodules/mosaic.py); None: none
    albumentations: str = "1.3.1"  # one of ALBUMENTATIONS
    # aa_clip: the first epoch of colour jitter (their stage 2's loader; stage 1's has none)
    color_from_epoch: int = 0

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
AA_CLIP_ROTATION = math.degrees(math.pi / 6)  # their RandomRotation(degrees=math.degrees(math.pi / 6))


def _applies(p: float, generator: torch.Generator) -> bool:
    """torchvision's ``RandomApply`` / flip draw: applied when a uniform draw is below ``p``."""
    return float(torch.rand(1, generator=generator)) < p


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator))


def aa_clip_color(image: Image.Image, generator: torch.Generator) -> Image.Image:
    """Their stage-2 ``transform_x`` head: brightness, contrast, saturation jitter of 0.5, each with p = 0.7."""
    from torchvision.transforms import functional as TF

    for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
        if _applies(0.7, generator):
            image = adjust(image, _uniform(0.5, 1.5, generator))
    return image


def aa_clip_geometry(
    image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Their ``transforms_list`` on ``cat([image, mask])``: rotation, translation, flips (nearest, fill 0)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    stacked = torch.cat([image, mask[None].to(image.dtype)])
    nearest, fill = InterpolationMode.NEAREST, [0.0] * stacked.shape[0]
    if _applies(0.5, generator):
        stacked = TF.rotate(
            stacked, _uniform(-AA_CLIP_ROTATION, AA_CLIP_ROTATION, generator), nearest, fill=fill
        )
    if _applies(0.5, generator):
        height, width = stacked.shape[-2:]
        shift = [round(_uniform(-0.15 * size, 0.15 * size, generator)) for size in (width, height)]
        stacked = TF.affine(stacked, 0.0, shift, 1.0, [0.0, 0.0], nearest, fill=fill)
    if _applies(0.5, generator):
        stacked = stacked.flip(-1)
    if _applies(0.5, generator):
        stacked = stacked.flip(-2)
    return stacked[:-1], stacked[-1].to(mask.dtype)


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
        pipeline = self.augmentation.pipeline
        generator = torch.Generator().manual_seed(seed) if pipeline == "aa_clip" else None
        if pipeline == "aa_clip" and epoch >= self.augmentation.color_from_epoch:
            image = aa_clip_color(image.convert("RGB"), generator)
        elif pipeline in AUGMENT:  # their images are 8-bit RGB (VCP-CLIP) or BMP (Bayes-PFL) files
            image, mask = AUGMENT[pipeline](image, mask, seed, self.augmentation.albumentations)
        tensors = self.transform(image, mask)
        if generator is not None:
            tensors = aa_clip_geometry(*tensors, generator)
        item = self.item(i, *tensors, image_size=image.size)
        if label is not None:
            item["label"] = torch.tensor(label, dtype=torch.long)
        return item
