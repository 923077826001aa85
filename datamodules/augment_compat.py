"""albumentations 1.3.1's semantics on the installed albumentations (1.4.24), for the pipelines of authors who
pinned 1.3.1 (Bayes-PFL's requirements.txt: ``albumentations==1.3.1``) or, reconstructing, ran it (VCP-CLIP,
by the same first author, records no version).

Same parameters in, same pixels out, and the same parameter distributions: four transforms of 1.4.24 differ
from 1.3.1 and are replaced here by subclasses whose draws and ``apply`` are 1.3.1's (the others, RandomRotate90,
RandomBrightnessContrast, Blur and OneOf, agree; tests/lightning_modules/bayes_pfl/test_bayes_pfl_parity.py compares
the pipeline with arrays 1.3.1 produced under the same draws):

- ``Rotate``: 1.3.1 builds the matrix with ``cv2.getRotationMatrix2D((w/2 - 0.5, h/2 - 0.5), angle, 1)``;
  1.4.24 composes it in float64, a few ulp apart, which moves OpenCV's 1/32-pixel fixed-point sampling
  (up to 5 grey levels on sharp edges);
- ``GaussNoise``: 1.3.1 draws a variance in [10, 50] (pixel values squared), adds float64 noise to the
  float32 image and truncates to uint8; 1.4.24 draws a standard deviation in [0.2, 0.44] x 255 and rounds;
- ``ColorJitter``: 1.3.1's default hue range is [-0.2, 0.2] (1.4.24: [-0.5, 0.5]) and its brightness,
  contrast, saturation and hue steps truncate where 1.4.24's round (up to 8 levels apart);
- ``GaussianBlur``: 1.3.1 draws the kernel as ``randrange(3, 8)`` with an even draw moved to the next odd
  size (3, 5, 7 with probabilities 1/5, 2/5, 2/5); 1.4.24 draws 3, 5, 7 uniformly.

Every draw comes from the transform's own generators (``py_random``, ``random_generator``), which
``Compose.set_random_seed`` seeds: the pipeline is a function of its seed.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
import albumentations as A  # noqa: E402


def rotate(img: np.ndarray, angle: float, interpolation: int, border_mode: int) -> np.ndarray:
    """1.3.1's ``geometric.functional.rotate`` (image or mask, any number of channels up to 4)."""
    height, width = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, 1.0)
    out = cv2.warpAffine(img, M=matrix, dsize=(width, height), flags=interpolation, borderMode=border_mode)
    return out.reshape(out.shape[:2] + img.shape[2:])


class Rotate(A.Rotate):
    """``A.Rotate`` with 1.3.1's matrix (no crop; 1.3.1's defaults: linear, reflect-101 borders)."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"angle": self.py_random.uniform(*self.limit)}

    def apply(self, img: np.ndarray, angle: float, **params: Any) -> np.ndarray:
        return rotate(img, angle, self.interpolation, self.border_mode)

    def apply_to_mask(self, mask: np.ndarray, angle: float, **params: Any) -> np.ndarray:
        return rotate(mask, angle, cv2.INTER_NEAREST, self.border_mode)


class GaussNoise(A.GaussNoise):
    """1.3.1's ``GaussNoise(var_limit=(10, 50), mean=0, per_channel=True)`` on uint8 images."""

    def __init__(self, var_limit: tuple[float, float] = (10.0, 50.0), p: float = 0.5) -> None:
        super().__init__(p=p)
        self.variance_range = (float(var_limit[0]), float(var_limit[1]))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        sigma = self.py_random.uniform(*self.variance_range) ** 0.5
        return {"gauss": self.random_generator.normal(0.0, sigma, data["image"].shape)}

    def apply(self, img: np.ndarray, gauss: np.ndarray, **params: Any) -> np.ndarray:
        return np.clip(img.astype(np.float32) + gauss, 0, 255).astype(img.dtype)


def _brightness(img: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1:
        return img
    lut = np.clip(np.arange(0, 256) * factor, 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def _contrast(img: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1:
        return img
    mean = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean()
    lut = np.clip(np.arange(0, 256) * factor + mean * (1 - factor), 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def _saturation(img: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1:
        return img
    gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(img, factor, gray, 1 - factor, gamma=0)


def _hue(img: np.ndarray, factor: float) -> np.ndarray:
    if factor == 0:
        return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    lut = np.mod(np.arange(0, 256, dtype=np.int16) + 180 * factor, 180).astype(np.uint8)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], lut)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


class ColorJitter(A.ColorJitter):
    """1.3.1's ``ColorJitter(0.2, 0.2, 0.2, 0.2)`` (its ``adjust_*_torchvision`` steps on 3-channel uint8)."""

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.2,
        p: float = 0.5,
    ) -> None:
        super().__init__(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=p)
        self.transforms = [_brightness, _contrast, _saturation, _hue]


class GaussianBlur(A.GaussianBlur):
    """1.3.1's ``GaussianBlur(blur_limit=(3, 7), sigma_limit=0)`` kernel draw (the blur itself agrees)."""

    def get_params(self) -> dict[str, float]:
        low, high = self.blur_limit
        ksize = self.py_random.randrange(low, high + 1)
        if ksize != 0 and ksize % 2 != 1:
            ksize = (ksize + 1) % (high + 1)
        return {"ksize": ksize, "sigma": self.py_random.uniform(*self.sigma_limit)}


def qu_et_al_pipeline(albumentations: str = "1.3.1") -> A.Compose:
    """The training augmentation of Qu et al.'s dataset classes (Bayes-PFL's ``MyDataset.img_trans``,
    datasets.py; VCP-CLIP's ``img_trans``, utils/dataset.py): in 1.3.1's semantics, or in the installed
    albumentations' own (``"1.4.24"``: what their code gets with it)."""
    if albumentations == "1.3.1":
        rotate, noise, jitter, blur = Rotate, GaussNoise, ColorJitter, GaussianBlur
    else:
        rotate, noise, jitter, blur = A.Rotate, A.GaussNoise, A.ColorJitter, A.GaussianBlur
    return A.Compose(
        [
            rotate(limit=30, p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(p=0.5),
            noise(p=0.5),
            A.OneOf([A.Blur(blur_limit=3, p=0.5), jitter(p=0.5), blur(p=0.5)], p=0.5),
        ],
        is_check_shapes=False,
    )
