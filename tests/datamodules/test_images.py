"""Every file type the benchmarks use loads as 8-bit RGB (H, W, 3); masks as bool (H, W): the luma
(``convert("L")``, as every official pipeline reads masks) > 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import CorruptImageError
from datamodules.images import image_size, load_image_rgb, load_mask, open_image


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_grayscale_loads_as_rgb(tmp_path: Path) -> None:
    gray = np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)
    rgb = load_image_rgb(_save(Image.fromarray(gray), tmp_path / "g.png"))
    assert rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8
    assert (rgb == gray[..., None]).all()


def test_palette_loads_as_rgb(tmp_path: Path) -> None:
    image = Image.new("P", (24, 16))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 12, 16))
    rgb = load_image_rgb(_save(image, tmp_path / "p.png"))
    assert rgb.shape == (16, 24, 3)
    assert (rgb[:, :12] == [255, 0, 0]).all() and (rgb[:, 12:] == 0).all()


def test_16_bit_is_scaled_to_8_bit(tmp_path: Path) -> None:
    array = np.zeros((16, 24), dtype=np.uint16)
    array[:, 12:] = 65535
    array[0, 0] = 32768
    path = _save(Image.fromarray(array), tmp_path / "d.png")
    assert Image.open(path).mode.startswith("I")
    rgb = load_image_rgb(path)
    assert rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8
    assert (rgb[:, 12:] == 255).all() and rgb[0, 0, 0] == 128 and rgb[1, 0, 0] == 0


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    image = Image.new("RGBA", (24, 16), (10, 20, 30, 0))
    rgb = load_image_rgb(_save(image, tmp_path / "a.png"))
    assert rgb.shape == (16, 24, 3) and (rgb == [10, 20, 30]).all()


@pytest.mark.parametrize(
    ("mode", "value"),
    [("L", 255), ("L", 1), ("P", 2), ("I;16", 300), ("RGB", (0, 0, 7)), ("1", 1), ("LA", (255, 255))],
)
def test_masks_binarised_above_zero(tmp_path: Path, mode: str, value: object) -> None:
    image = Image.new(mode, (24, 16))
    if mode == "P":  # index 2 is dark red: luma 0.299 * 60 = 18
        image.putpalette([0, 0, 0, 0, 0, 0, 60, 0, 0] + [0] * 759)
    image.paste(value, (0, 0, 12, 16))
    mask = load_mask(_save(image, tmp_path / "m.png"))
    assert mask.dtype == bool and mask.shape == (16, 24)
    assert mask[:, :12].all() and not mask[:, 12:].any()


def test_colour_masks_are_read_by_their_luma_as_the_official_code_does(tmp_path: Path) -> None:
    """``np.array(Image.open(mask).convert("L")) > 0``: ITU-R 601 luma rounded to 8 bits, so a pure red
    of 1 (luma 0.299) is normal, a red of 2 (0.598 -> 1) anomalous."""
    array = np.zeros((16, 24, 3), dtype=np.uint8)
    array[:, :8] = (1, 0, 0)
    array[:, 8:16] = (2, 0, 0)
    array[:, 16:] = (0, 0, 5)  # blue: 5 * 0.114 = 0.57 -> 1
    mask = load_mask(_save(Image.fromarray(array), tmp_path / "c.png"))
    luma = np.rint(array @ np.array([0.299, 0.587, 0.114]))
    assert (mask == (luma > 0)).all()
    assert not mask[:, :8].any() and mask[:, 8:].all()


def test_tiff_and_bmp(tmp_path: Path) -> None:
    for name in ("x.tif", "x.bmp"):
        path = _save(Image.new("RGB", (24, 16), (1, 2, 3)), tmp_path / name)
        assert load_image_rgb(path).shape == (16, 24, 3)
        assert image_size(path) == (24, 16)


def test_corrupt_and_missing_files_name_the_path(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for loader in (load_image_rgb, load_mask, open_image, image_size):
        with pytest.raises(CorruptImageError, match="broken.png"):
            loader(broken)
        with pytest.raises(CorruptImageError, match="not found: .*missing.png"):
            loader(tmp_path / "missing.png")
    good = _save(Image.new("RGB", (240, 160)), tmp_path / "truncated.png")
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(CorruptImageError, match="truncated.png"):
        load_image_rgb(good)
