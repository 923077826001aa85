"""Reading images and masks the same way for every dataset.

Benchmarks mix grayscale, palette, 16-bit and RGB(A) files; everything is returned as 8-bit RGB so the
model sees one format. Masks are binarised with ``> 0`` (VisA stores class indices, others 0/255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.errors import CorruptImageError

_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


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


def load_image_rgb(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8; 16-bit and float images are scaled by their value range to 8 bits."""
    image = _open(Path(path))
    if image.mode in _HIGH_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "F":
            low = float(array.min())
            array = (array - low) / max(float(array.max()) - low, 1e-12) * 255.0
        else:
            array = array / high * 255.0
        gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_mask(path: str | Path) -> np.ndarray:
    """``(H, W)`` bool: any non-zero value (in any channel, palette index or bit depth) is anomalous."""
    image = _open(Path(path))
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3].max(axis=2) if image.mode != "LA" else array[..., 0]
    return array > 0
