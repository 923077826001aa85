"""The pictures of ``zsad predict``: one colour range per run, an overlay and a panel per image.

Colours only compare between images when they mean the same values in every picture, so a prediction
draws all of its images with one range: by default the lowest and highest value of all its maps (known
once every image is predicted, so pictures are drawn after the maps are written), else the range the
user gave (``--overlay-range``), with a warning when the maps leave it. Each image gets

- ``overlays/{name}.png``: the heatmap blended over the image, at the image's own size;
- ``panels/{name}.png``: image | heatmap with a colorbar (the pixel threshold marked on it) | the
  thresholded region's contour on the image, under a title with the score, the label and the thresholds.

Drawn with Pillow (a matplotlib figure per image costs a tenth of a second or more).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from pipelines.predict_thresholds import Thresholds
from pipelines.visualize import MASK_COLOUR, heatmap_rgb, overlay, resize_rgb, save_png

PANEL_HEIGHT = 256  # px of each image in a panel
PANEL_MAX_WIDTH = 512
COLORBAR_WIDTH = 14
CONTOUR_COLOUR = (255, 0, 255)  # magenta: visible on industrial and medical images alike
GAP = 8


@dataclasses.dataclass
class ColourRange:
    """The map values the heatmap colours span (``low`` blue .. ``high`` red) and how they were chosen."""

    low: float
    high: float
    rule: str
    from_maps: bool = True  # False: the user's --overlay-range

    @classmethod
    def of_maps(cls, low: float, high: float, n_maps: int) -> ColourRange:
        """The run's own range: the lowest and highest value of all its maps."""
        rule = f"min and max of all {n_maps} predicted maps (--overlay-range not given)"
        if not high > low:  # constant maps: any range around the value shows them in one colour
            low, high, rule = low - 0.5, low + 0.5, rule + "; the maps are constant: their value +- 0.5"
        return cls(float(low), float(high), rule)

    @classmethod
    def given(cls, low: float, high: float) -> ColourRange:
        return cls(float(low), float(high), "--overlay-range", from_maps=False)


def out_of_range_warning(colours: ColourRange, maps_low: float, maps_high: float, share: float) -> str | None:
    """The warning for maps outside a range the user gave (``share``: the fraction of pixels outside)."""
    if maps_low >= colours.low and maps_high <= colours.high:
        return None
    return (
        f"the maps span {maps_low:.4g}..{maps_high:.4g}, outside --overlay-range {colours.low:g} "
        f"{colours.high:g}: {100 * share:.1f}% of the pixels are drawn in the end colours (clipped); "
        "omit --overlay-range to span the maps"
    )


def threshold_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """``map >= threshold`` in float64: a float32 comparison would round the threshold to the maps' precision."""
    return anomaly_map.astype(np.float64) >= threshold


@dataclasses.dataclass
class MapStatistics:
    """What the run's pictures and warnings need to know of the maps and labels (summed over processes)."""

    n_images: int = 0  # readable images
    n_anomalous: int = 0  # of them labelled anomalous (with an image threshold)
    n_maps: int = 0
    low: float = math.inf
    high: float = -math.inf
    n_pixels: int = 0
    n_outside: int = 0  # pixels outside --overlay-range
    n_all_flagged: int = 0  # maps whose every pixel is >= it

    def add_map(
        self, anomaly_map: np.ndarray, overlay_range: tuple[float, float] | None, pixel: float | None
    ) -> None:
        self.n_maps += 1
        self.low = min(self.low, float(anomaly_map.min()))
        self.high = max(self.high, float(anomaly_map.max()))
        self.n_pixels += anomaly_map.size
        if overlay_range is not None:
            low, high = overlay_range
            self.n_outside += int(np.count_nonzero((anomaly_map < low) | (anomaly_map > high)))
        if pixel is not None:
            self.n_all_flagged += int(threshold_mask(anomaly_map, pixel).all())

    @classmethod
    def total(cls, parts: list[MapStatistics]) -> MapStatistics:
        summed = {
            f.name: sum(getattr(p, f.name) for p in parts)
            for f in dataclasses.fields(cls)
            if f.name not in ("low", "high")
        }
        return cls(**summed, low=min(p.low for p in parts), high=max(p.high for p in parts))


def run_warnings(stats: MapStatistics, thresholds: Thresholds, colours: ColourRange | None) -> list[str]:
    """What the whole run's maps say about the colour range and the thresholds: maps outside a range the
    user gave, a pixel threshold below every pixel of some maps, an image threshold no image falls below."""
    warnings = []
    if colours is not None and not colours.from_maps and stats.n_maps:
        warning = out_of_range_warning(colours, stats.low, stats.high, stats.n_outside / stats.n_pixels)
        warnings += [warning] if warning else []
    if thresholds.pixel is not None and stats.n_all_flagged:
        warnings.append(
            f"every pixel of {stats.n_all_flagged} of {stats.n_maps} maps is >= the pixel threshold "
            f"{thresholds.pixel:.4g} (all-white masks; the maps span {stats.low:.4g}..{stats.high:.4g}): "
            f"the threshold does not fit these maps ({thresholds.source})"
        )
    if thresholds.image is not None and stats.n_images > 1 and stats.n_anomalous == stats.n_images:
        warnings.append(
            f"all {stats.n_images} images are labelled anomalous: every score is >= the image threshold "
            f"{thresholds.image:.4g} ({thresholds.source})"
        )
    return warnings


def panel_title(
    name: str,
    score: float,
    label: int | None,
    thresholds: Thresholds,
    mask: np.ndarray | None,
    colours: ColourRange,
) -> list[str]:
    """A panel's title lines: the image, its score and label, the pixel threshold, the colours."""
    if label is None:
        verdict = "no image threshold"
    else:
        relation = ">=" if label else "<"
        verdict = (
            f"{'anomalous' if label else 'normal'} (score {relation} image threshold {thresholds.image:.4g})"
        )
    pixels = "no pixel threshold"
    if mask is not None:
        pixels = f"pixel threshold {thresholds.pixel:.4g}: {100 * mask.mean():.1f}% of the pixels are >= it (outlined)"
    return [
        f"{name}: score {score:.4g}, {verdict}",
        pixels,
        f"colours {colours.low:.4g}..{colours.high:.4g}: {colours.rule}",
    ]


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def tick_labels(low: float, high: float, n: int = 5) -> list[tuple[float, str]]:
    """``n`` evenly spaced values from ``low`` to ``high`` with as many decimals as tell them apart."""
    step = (high - low) / (n - 1)
    decimals = max(0, min(8, 1 - math.floor(math.log10(step)))) if step > 0 else 3
    return [(low + i * step, f"{low + i * step:.{decimals}f}") for i in range(n)]


def contour(mask: np.ndarray) -> np.ndarray:
    """The outline of ``mask`` (bool): its pixels with a 4-neighbour outside it (the image border counts
    as outside), thickened by one pixel so that it shows when the picture is scaled down."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, border_value=0)
    edge = mask & ~inner
    return ndimage.binary_dilation(edge) if edge.any() else edge


def display_size(height: int, width: int) -> tuple[int, int]:
    """Each tile's (height, width): PANEL_HEIGHT high, the image's aspect, at most PANEL_MAX_WIDTH wide."""
    scale = min(PANEL_HEIGHT / height, PANEL_MAX_WIDTH / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if anomaly_map.shape == tuple(size):
        return anomaly_map
    resized = Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if mask.shape == tuple(size):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(image) > 127


def contour_picture(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``image`` with the region of ``mask`` tinted and outlined (the image as is without a mask)."""
    if mask is None:
        return image
    out = image.astype(np.float32)
    out[mask] = 0.75 * out[mask] + 0.25 * MASK_COLOUR
    out[contour(mask)] = CONTOUR_COLOUR
    return out.round().astype(np.uint8)


def panel(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    colours: ColourRange,
    mask: np.ndarray | None,
    pixel_threshold: float | None,
    title: list[str],
    note: str,
) -> np.ndarray:
    """image | heatmap + colorbar | contour of ``mask`` (map >= pixel threshold) on the image, with
    ``title`` above (one string per line) and ``note`` in the third tile's place when ``mask`` is None.
    ``image`` (H, W, 3) uint8 and ``anomaly_map`` (H, W) are at the image's own size."""
    from PIL import Image, ImageDraw

    font, small = _font(13), _font(11)
    size = display_size(*anomaly_map.shape)
    height, width = size
    shown = resize_rgb(image, size)
    heat = heatmap_rgb(_resize_map(anomaly_map, size), colours.low, colours.high)
    labels = tick_labels(colours.low, colours.high)
    label_width = max(int(small.getlength(text)) for _, text in labels) + 6
    top = 8 + 17 * len(title) + 6
    x_image, x_heat = GAP, 2 * GAP + width
    x_bar = x_heat + width + 4
    x_contour = x_bar + COLORBAR_WIDTH + label_width + GAP
    canvas = Image.new("RGB", (x_contour + width + GAP, top + height + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title):
        draw.text((GAP, 8 + 17 * i), line, fill="black", font=font)
    canvas.paste(Image.fromarray(shown), (x_image, top))
    canvas.paste(Image.fromarray(heat), (x_heat, top))
    # the colorbar: high at the top, as the values of a plot's y axis
    ramp = np.linspace(colours.high, colours.low, height, dtype=np.float64)[:, None]
    bar = heatmap_rgb(np.repeat(ramp, COLORBAR_WIDTH, axis=1), colours.low, colours.high)
    canvas.paste(Image.fromarray(bar), (x_bar, top))

    def y_of(value: float) -> float:
        return top + (colours.high - value) / (colours.high - colours.low) * (height - 1)

    for value, text in labels:
        y = y_of(value)
        draw.line((x_bar + COLORBAR_WIDTH, y, x_bar + COLORBAR_WIDTH + 3, y), fill="black")
        draw.text((x_bar + COLORBAR_WIDTH + 5, y), text, fill="black", font=small, anchor="lm")
    if pixel_threshold is not None and colours.low <= pixel_threshold <= colours.high:
        y = y_of(pixel_threshold)
        draw.line((x_bar - 3, y, x_bar + COLORBAR_WIDTH + 2, y), fill=CONTOUR_COLOUR, width=2)
    if mask is None:
        draw.rectangle((x_contour, top, x_contour + width - 1, top + height - 1), fill=(235, 235, 235))
        draw.multiline_text(
            (x_contour + width // 2, top + height // 2),
            note,
            fill="gray",
            font=small,
            anchor="mm",
            align="center",
        )
    else:
        canvas.paste(Image.fromarray(contour_picture(shown, _resize_mask(mask, size))), (x_contour, top))
    return np.asarray(canvas)


def draw_pictures(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    colours: ColourRange,
    mask: np.ndarray | None,
    pixel_threshold: float | None,
    title: list[str],
    out: Path,
    name: str,
) -> None:
    """``overlays/{name}.png`` and ``panels/{name}.png`` below ``out`` for one predicted image."""
    save_png(overlay(image, anomaly_map, colours.low, colours.high), out / "overlays" / f"{name}.png")
    note = "no pixel threshold\n(--pixel-threshold, --threshold-from\nor --normal-dir)"
    save_png(
        panel(image, anomaly_map, colours, mask, pixel_threshold, title, note),
        out / "panels" / f"{name}.png",
    )
