"""Image and mask transforms (albumentations, applied to image and mask together).

CLIP preprocessing as in the methods' code: square resize without keeping the aspect ratio (bicubic)
and CLIP's mean/std. The mask goes from its original size straight to the evaluation size; how it is
interpolated changes PRO, so it is a recorded option.
"""

from __future__ import annotations

import dataclasses

import albumentations as A
import cv2
import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MASK_INTERPOLATIONS = ("nearest", "bilinear")


@dataclasses.dataclass(frozen=True)
class TransformSpec:
    image_size: int  # model input size (square)
    eval_size: int  # size of the ground-truth masks and anomaly maps used for metrics
    mask_interpolation: str = "nearest"  # "nearest", or "bilinear" followed by > 0.5 (the authors' code)
    hflip_p: float = 0.0  # training-time augmentation (off in the authors' protocol)

    def __post_init__(self) -> None:
        if self.mask_interpolation not in MASK_INTERPOLATIONS:
            raise ValueError(
                f"mask_interpolation must be one of {MASK_INTERPOLATIONS}, got {self.mask_interpolation!r}"
            )


class ImageMaskTransform:
    """``(image uint8 HxWx3, mask bool HxW) -> (image float 3xSxS normalised, mask float SxS in {0,1})``."""

    def __init__(self, spec: TransformSpec) -> None:
        self.spec = spec
        self.augment = A.Compose([A.HorizontalFlip(p=spec.hflip_p)]) if spec.hflip_p > 0 else None
        self.image_pipeline = A.Compose(
            [
                A.Resize(spec.image_size, spec.image_size, interpolation=cv2.INTER_CUBIC),
                A.Normalize(mean=CLIP_MEAN, std=CLIP_STD, max_pixel_value=255.0),
            ]
        )
        self.mask_interpolation = (
            cv2.INTER_LINEAR if spec.mask_interpolation == "bilinear" else cv2.INTER_NEAREST
        )

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mask = mask.astype(np.float32)
        if self.augment is not None:
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = self.image_pipeline(image=image)["image"]
        size = (self.spec.eval_size, self.spec.eval_size)
        mask = cv2.resize(mask, size, interpolation=self.mask_interpolation) > 0.5
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(
            mask.astype(np.float32)
        )
