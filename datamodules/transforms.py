"""Image and mask preprocessing as each method's official code does it (docs/datasets.md, "Preprocessing").

The official pipelines differ in ways that move the numbers, so each method declares an
:class:`ImagePreprocessing` (its spec's ``MethodSpec.preprocessing``) and the datamodule applies it:

- AnomalyCLIP, VAND (and, by default, the methods without official code): the PIL image is resized in its
  file's mode with torchvision's ``Resize((S, S), BICUBIC)`` (PIL resampling, which always antialiases),
  then ``CenterCrop(S)`` (a no-op), ``convert("RGB")``, ``ToTensor`` and OpenAI's mean/std. The mask file
  is ``convert("L") > 0``, stored as 0/255, resized with ``Resize((S, S))`` (PIL bilinear), ``ToTensor``
  and binarised ``> 0.5``.
- AnoVL (and Dual-Image, built on it): the same with a *bilinear* image resize.
- WinCLIP (anomalib): ``convert("RGB")`` first, then the float tensor in [0, 1] is resized by torchvision
  (``Resize((240, 240), BICUBIC, antialias=True)``) and normalised; the mask (``convert("L") > 0``) is
  resized as a ``Mask``, i.e. nearest on the tensor.
- AnomalyDINO (anomalib): WinCLIP's resize at 252 px, normalised with ImageNet's mean/std (DINOv2's).

Every field is a switch whose default is AnomalyCLIP's behaviour; ``DataConfig`` can override the
method's choice per dataset, and the applied values are recorded in the results.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from datamodules.images import HIGH_BIT_MODES, scale_to_8bit

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, used by every official pipeline
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's (torchvision's ImageNet statistics), anomalib's AnomalyDINO
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}

RESIZE_BACKENDS = ("pil", "tensor")
RESIZES = ("square", "short_side")
MASK_SIZES = ("eval_size", "original")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
MASK_INTERPOLATIONS = ("bilinear", "nearest")
HIGH_BIT_DEPTHS = ("clip", "scale")
_MODES = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """How a method's official code turns an image file and its mask file into tensors.

    The defaults are AnomalyCLIP's (utils.get_transform + dataset.py); see the module docstring for the
    others. ``resize_backend`` applies to image and mask alike.
    """

    # "pil": resize the decoded PIL image in its own mode (uint8 results), then convert to RGB, as
    # torchvision does for PIL inputs (AnomalyCLIP, VAND, AnoVL); "tensor": convert to RGB, scale to float
    # in [0, 1] and resize the tensor with torchvision (anomalib's WinCLIP).
    resize_backend: str = "pil"
    interpolation: str = "bicubic"  # image resize: "bicubic" (AnomalyCLIP, VAND, WinCLIP), "bilinear" (AnoVL)
    antialias: bool = True  # PIL always antialiases; False is only possible with resize_backend="tensor"
    mask_interpolation: str = "bilinear"  # "bilinear" then > mask_threshold (official), or "nearest"
    mask_threshold: float = 0.5  # the resized mask in [0, 1] is anomalous where > this (official: 0.5)
    # 16-bit and float images: "clip" at 255 as Pillow's convert("RGB") does in the official code, or
    # "scale" by the value range to 8 bits first (zsad's option; no benchmark of docs/datasets.md needs it).
    high_bit_depth: str = "clip"
    # "square": Resize((S, S)) (every method's default); "short_side": torchvision's Resize(S), the short
    # side to S and the long one to int(S * long / short), no crop (AnoVL's vis_test.py on VisA). The
    # mask goes the same way to the evaluation size.
    resize: str = "square"
    # Convert the decoded image to RGB *before* the resize (AdaCLIP's dataset: Image.open(...).convert("RGB")
    # then the transform); the same pixels for 8-bit grey and RGB files, not for palette ("P": then resized
    # bicubic, not nearest), RGBA (alpha dropped first) or 16-bit files (clipped at 255 first).
    rgb_before_resize: bool = False
    # The mean/std the resized image is normalised with: "clip" (OpenAI's, every CLIP method) or "imagenet"
    # (the DINOv2 backbones': AnomalyDINO).
    normalization: str = "clip"
    # The ground-truth mask's size for metrics: "eval_size" (resized as above) or "original" (the mask
    # file's own resolution, binarised > mask_threshold; the AnomalyDINO authors' post_eval, which resizes
    # the maps to each image's size instead); "original" evaluates a batch of one image at a time.
    mask_size: str = "eval_size"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("resize_backend", RESIZE_BACKENDS),
            ("interpolation", INTERPOLATIONS),
            ("mask_interpolation", MASK_INTERPOLATIONS),
            ("high_bit_depth", HIGH_BIT_DEPTHS),
            ("resize", RESIZES),
            ("normalization", tuple(NORMALIZATIONS)),
            ("mask_size", MASK_SIZES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.antialias and self.resize_backend == "pil":
            raise ValueError(
                "antialias=False needs resize_backend='tensor' (PIL resampling always antialiases)"
            )
        if not 0.0 <= self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1), got {self.mask_threshold}")

    def with_overrides(self, **overrides: Any) -> ImagePreprocessing:
        """A copy with the given fields replaced; ``None`` values keep this one's (unset config keys)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class TransformSpec:
    image_size: int  # model input size (square)
    eval_size: int  # size of the ground-truth masks and anomaly maps used for metrics
    preprocessing: ImagePreprocessing = ImagePreprocessing()
    hflip_p: float = 0.0  # training-time augmentation (off in the authors' protocol)


def _size(size: int, resize: str) -> list[int]:
    """torchvision's size argument: ``[S, S]``, or ``[S]`` for the short side."""
    return [size, size] if resize == "square" else [size]


def _resize_pil(image: Image.Image, size: int, interpolation: str, resize: str = "square") -> Image.Image:
    return TF.resize(image, _size(size, resize), interpolation=_MODES[interpolation])


def _resize_tensor(
    tensor: torch.Tensor, size: int, interpolation: str, antialias: bool, resize: str = "square"
) -> torch.Tensor:
    return TF.resize(tensor, _size(size, resize), interpolation=_MODES[interpolation], antialias=antialias)


class ImageMaskTransform:
    """``(PIL image as decoded, binary mask or None) -> (image float 3xSxS normalised, mask float ExE in
    {0, 1})``; the mask is the official code's mode-"L" image of 0/255 (:func:`datamodules.images.open_mask`)."""

    def __init__(self, spec: TransformSpec) -> None:
        self.spec = spec
        self.pre = spec.preprocessing
        mean, std = NORMALIZATIONS[self.pre.normalization]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def eight_bit(self, image: Image.Image) -> Image.Image:
        """A 16-bit or float image scaled to 8 bits where ``high_bit_depth="scale"``; else as it is (Pillow
        clips it at 255 when it converts it). What :meth:`image` starts from, and what any change of the
        decoded image before it (AnomalyDINO's reference rotations) must start from too."""
        if image.mode in HIGH_BIT_MODES and self.pre.high_bit_depth == "scale":
            return scale_to_8bit(image)
        return image

    def image(self, image: Image.Image) -> torch.Tensor:
        pre, size = self.pre, self.spec.image_size
        image = self.eight_bit(image)
        if pre.resize_backend == "pil":
            if pre.rgb_before_resize:
                image = image.convert("RGB")
            resized = _resize_pil(image, size, pre.interpolation, pre.resize)
            tensor = TF.pil_to_tensor(resized.convert("RGB"))
            tensor = tensor.float().div(255)
        else:
            tensor = TF.pil_to_tensor(image.convert("RGB")).float().div(255)
            tensor = _resize_tensor(tensor, size, pre.interpolation, pre.antialias, pre.resize)
        return (tensor - self.mean) / self.std

    def mask(self, mask: Image.Image | None) -> torch.Tensor:
        size, pre = self.spec.eval_size, self.pre
        if pre.mask_size == "original":
            if mask is None:
                raise ValueError("mask_size='original' needs the image's size for a normal image's mask")
            return (TF.pil_to_tensor(mask)[0].float().div(255) > pre.mask_threshold).float()
        if (
            mask is None and pre.resize == "square"
        ):  # a normal image: the official code resizes an all-zero mask
            return torch.zeros(size, size)
        if mask is None:
            raise ValueError("resize='short_side' needs the image's size for a normal image's mask")
        if pre.resize_backend == "pil":
            resized = _resize_pil(mask, size, pre.mask_interpolation, pre.resize)
            resized = TF.pil_to_tensor(resized)[0].float().div(255)
        else:
            tensor = TF.pil_to_tensor(mask).float().div(255)
            resized = _resize_tensor(tensor, size, pre.mask_interpolation, pre.antialias, pre.resize)[0]
        return (resized > pre.mask_threshold).float()

    def __call__(self, image: Image.Image, mask: Image.Image | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.hflip_p > 0 and random.random() < self.spec.hflip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mask is not None else None
        if mask is None and (self.pre.resize == "short_side" or self.pre.mask_size == "original"):
            # its shape follows the image's
            return self.image(image), self.mask(Image.new("L", image.size))
        return self.image(image), self.mask(mask)
