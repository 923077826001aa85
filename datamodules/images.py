"""Reading images and masks the same way for every dataset.

Benchmarks mix grayscale, palette, 16-bit and RGB(A) files. The model's input is made from the decoded
image by :mod:`datamodules.transforms` (as each method's official code does); :func:`load_image_rgb` is
8-bit RGB for checks. Masks are read as the official code reads them: ``convert("L") > 0`` (the luma of a
colour mask; VisA stores class indices, others 0/255). A mask may also be a *folder* of PNGs, one per defect
region (MVTec LOCO, AutoVI): its mask is the union of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.errors import CorruptImageError

HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise CorruptImageError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"cannot decode {path} ({error}); re-download or remove the file") from None
    return image


def open_image(path: str | Path) -> Image.Image:
    """The decoded PIL image in its own mode; unreadable files raise :class:`CorruptImageError`."""
    return _open(Path(path))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file header only (fast checks of whole datasets)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise CorruptImageError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"cannot read {path} ({error}); re-download or remove the file") from None


def scale_to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit or float image as 8-bit grey ("L"), scaled by its value range (16-bit: 65535; 32-bit
    integer: its maximum; float: min..max), instead of Pillow's clipping at 255."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low = float(array.min())
        array = (array - low) / max(float(array.max()) - low, 1e-12) * 255.0
    else:
        high = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = array / high * 255.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def load_image_rgb(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8; 16-bit and float images are scaled by their value range to 8 bits."""
    image = _open(Path(path))
    if image.mode in HIGH_BIT_MODES:
        image = scale_to_8bit(image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def open_mask(path: str | Path) -> Image.Image:
    """The mask as the official code builds it: ``convert("L") > 0`` as a mode-"L" image of 0 / 255."""
    return Image.fromarray(load_mask(path).astype(np.uint8) * 255, mode="L")


def region_files(folder: str | Path) -> list[Path]:
    """The PNGs of a mask folder (one per defect region), sorted as MVTec's LOCO evaluation globs them
    (``sorted(glob("*.png"))``); an empty folder is a :class:`CorruptImageError` naming it."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))
    if not files:
        raise CorruptImageError(f"mask folder {folder} holds no PNG (one per defect region expected)")
    return files


def load_mask(path: str | Path) -> np.ndarray:
    """``(H, W)`` bool: anomalous where the luma (``convert("L")``, as every official pipeline reads masks)
    is non-zero; palette, 16-bit and RGB(A) masks included. A folder is the union of its region PNGs (their
    sizes must agree)."""
    path = Path(path)
    if not path.is_dir():
        return np.asarray(_open(path).convert("L")) > 0
    union: np.ndarray | None = None
    for region in region_files(path):
        mask = np.asarray(_open(region).convert("L")) > 0
        if union is not None and union.shape != mask.shape:
            raise CorruptImageError(
                f"region {region} is {mask.shape[1]}x{mask.shape[0]} but the other regions of {path} are "
                f"{union.shape[1]}x{union.shape[0]}"
            )
        union = mask if union is None else union | mask
    assert union is not None  # region_files raised for an empty folder
    return union


def mask_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a mask file, or of every region PNG of a mask folder (headers only; regions of
    different sizes are a :class:`CorruptImageError`)."""
    path = Path(path)
    if not path.is_dir():
        return image_size(path)
    sizes = {region: image_size(region) for region in region_files(path)}
    first = next(iter(sizes.values()))
    for region, size in sizes.items():
        if size != first:
            raise CorruptImageError(
                f"region {region} is {size[0]}x{size[1]} but the first region of {path} is {first[0]}x{first[1]}"
            )
    return first
