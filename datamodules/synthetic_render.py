"""Rendering for the synthetic benchmark (:mod:`datamodules.synthetic` writes it to disk): two visual styles of
four categories each (objects and textures), four defect kinds, and the per-image generators.

Each image draws from its own ``numpy`` Generator seeded from (seed, style, category, split, index), never
from a global RNG, so the same seed and parameters give identical pixels. A defect is drawn on the
noise-free exposure and the same noise field is added to both versions, so its mask is exactly the pixels
whose 8-bit value the defect changed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "missing_part")
DEFAULT_IMAGE_SIZE = 64

FloatImage = np.ndarray  # (H, W, 3) float64 in [0, 1]


@dataclass(frozen=True)
class _Rendered:
    """A defect-free render: the image, the background alone, and the object's coverage."""

    image: FloatImage
    background: FloatImage
    foreground: np.ndarray  # (H, W) float coverage in [0, 1]; all ones for textures


@dataclass(frozen=True)
class _Category:
    kind: str  # "object" | "texture"
    description: str
    render: Callable[[np.random.Generator, int], _Rendered]


@dataclass(frozen=True)
class _Style:
    description: str
    categories: dict[str, _Category]
    stain_colours: tuple[tuple[float, float, float], ...]
    noise_sigma: tuple[float, float]


# --------------------------------------------------------------------------------------------------
# drawing helpers (all in float RGB, pixel-centre coordinates relative to the image centre)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy - c, xx - c


def _rotate(yy: np.ndarray, xx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame rotated by ``angle`` (so shapes drawn in it appear rotated)."""
    ca, sa = np.cos(angle), np.sin(angle)
    return -sa * xx + ca * yy, ca * xx + sa * yy


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased fill from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float | tuple[float, float]) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-12)


def _grey_jitter(
    rng: np.random.Generator, rgb: Sequence[float], amount: float, tint: float = 0.012
) -> np.ndarray:
    """Brightness jitter with only a faint tint, so industrial greys stay grey."""
    shift = rng.uniform(-amount, amount) + rng.uniform(-tint, tint, 3)
    return np.clip(np.asarray(rgb, dtype=np.float64) + shift, 0.0, 1.0)


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _blend(base: FloatImage, top: FloatImage | np.ndarray, alpha: np.ndarray) -> FloatImage:
    a = alpha[..., None]
    return base * (1.0 - a) + np.broadcast_to(top, base.shape) * a


def _shade(colour: np.ndarray, brightness: np.ndarray) -> FloatImage:
    return np.clip(brightness[..., None] * colour[None, None, :], 0.0, 1.0)


def _background(rng: np.random.Generator, size: int, colour: np.ndarray, ramp: float) -> FloatImage:
    """A flat backdrop with a gentle lighting ramp and low-frequency mottling."""
    yy, xx = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp_field = ramp * (np.cos(angle) * xx + np.sin(angle) * yy) / size
    mottle = 0.015 * _smooth_noise(rng, size, size / 8)
    return _shade(colour, 1.0 + ramp_field + mottle)


def _texture(image: FloatImage) -> _Rendered:
    return _Rendered(
        image=np.clip(image, 0, 1), background=np.clip(image, 0, 1), foreground=np.ones(image.shape[:2])
    )


def _object(background: FloatImage, obj: FloatImage, coverage: np.ndarray) -> _Rendered:
    return _Rendered(
        image=np.clip(_blend(background, obj, coverage), 0, 1), background=background, foreground=coverage
    )


def _pose(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Object-centred coordinates with a random offset, plus a random scale factor."""
    yy, xx = _grid(size)
    dy, dx = rng.uniform(-0.06, 0.06, 2) * size
    return yy - dy, xx - dx, rng.uniform(0.92, 1.08)


# --------------------------------------------------------------------------------------------------
# industrial style: grey metal parts on a dark conveyor, fabric and brushed-metal textures


def _render_disc(rng: np.random.Generator, size: int) -> _Rendered:
    """A machined washer: annulus with concentric turning marks and directional lighting."""
    bg = _background(rng, size, _grey_jitter(rng, (0.2, 0.2, 0.21), 0.04), 0.25)
    yy, xx, scale = _pose(rng, size)
    r = np.hypot(yy, xx)
    r_out, r_in = 0.31 * size * scale, rng.uniform(0.09, 0.12) * size * scale
    cov = _coverage(r - r_out) * _coverage(r_in - r)
    light = rng.uniform(0, 2 * np.pi)
    lit = 0.85 + 0.2 * (np.cos(light) * xx + np.sin(light) * yy) / r_out
    rings = 0.05 * np.sin(2 * np.pi * r / rng.uniform(2.2, 3.0) + rng.uniform(0, 2 * np.pi))
    bevel = 0.18 * (np.exp(-np.abs(r - r_out) / 1.2) + np.exp(-np.abs(r - r_in) / 1.2))
    obj = _shade(_grey_jitter(rng, (0.72, 0.72, 0.74), 0.05), lit + rings - bevel)
    return _object(bg, obj, cov)


def _render_plate(rng: np.random.Generator, size: int) -> _Rendered:
    """A rectangular aluminium plate with four corner screw holes and brushing along its length."""
    bg = _background(rng, size, _grey_jitter(rng, (0.2, 0.21, 0.22), 0.04), 0.25)
    yy, xx, scale = _pose(rng, size)
    v, u = _rotate(yy, xx, rng.uniform(-0.35, 0.35))
    half_w, half_h, corner = 0.31 * size * scale, 0.21 * size * scale, 0.05 * size
    qx, qy = np.abs(u) - (half_w - corner), np.abs(v) - (half_h - corner)
    sd = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - corner
    cov = _coverage(sd)
    hole_r = 0.04 * size * scale
    for sx in (-1, 1):
        for sy in (-1, 1):
            d = np.hypot(u - sx * (half_w - 0.1 * size), v - sy * (half_h - 0.1 * size))
            cov = cov * (1.0 - _coverage(d - hole_r))
    brushed = ndimage.gaussian_filter(rng.standard_normal((size, size)), (0.4, 5.0), mode="wrap")
    brushed = ndimage.map_coordinates(brushed, [v + size / 2, u + size / 2], order=1, mode="wrap")
    brushed /= brushed.std() + 1e-12
    light = rng.uniform(0, 2 * np.pi)
    lit = 0.9 + 0.12 * (np.cos(light) * u + np.sin(light) * v) / half_w + 0.03 * brushed
    edge = 0.15 * np.exp(-np.abs(sd) / 1.0)
    obj = _shade(_grey_jitter(rng, (0.74, 0.75, 0.78), 0.05), lit - edge)
    return _object(bg, obj, cov)


def _render_weave(rng: np.random.Generator, size: int) -> _Rendered:
    """Plain-weave technical fabric: alternating over/under threads with cylindrical shading."""
    yy, xx = _grid(size)
    v, u = _rotate(yy, xx, rng.uniform(-0.15, 0.15))
    period = size / rng.uniform(7.0, 9.0)
    u, v = u / period + rng.uniform(0, 2), v / period + rng.uniform(0, 2)
    fu, fv = u - np.floor(u), v - np.floor(v)
    warp_on_top = (np.floor(u) + np.floor(v)) % 2 == 0
    warp = 0.55 + 0.45 * np.sin(np.pi * fu) * (0.85 + 0.15 * np.sin(np.pi * fv))
    weft = 0.55 + 0.45 * np.sin(np.pi * fv) * (0.85 + 0.15 * np.sin(np.pi * fu))
    fibre = 0.04 * _smooth_noise(rng, size, 0.7)
    bright = np.where(warp_on_top, warp, weft) + fibre
    return _texture(_shade(_grey_jitter(rng, (0.62, 0.6, 0.55), 0.07, tint=0.025), bright))


def _render_grain(rng: np.random.Generator, size: int) -> _Rendered:
    """Brushed stainless steel: long anisotropic streaks under a soft lighting gradient."""
    streaks = _smooth_noise(rng, size, (0.5, rng.uniform(5.0, 9.0)))
    streaks = ndimage.rotate(streaks, rng.uniform(-12, 12), reshape=False, order=1, mode="reflect")
    yy, xx = _grid(size)
    light = rng.uniform(0, 2 * np.pi)
    bright = 0.92 + 0.07 * streaks + 0.12 * (np.cos(light) * xx + np.sin(light) * yy) / size
    return _texture(_shade(_grey_jitter(rng, (0.66, 0.67, 0.7), 0.05), bright))


# --------------------------------------------------------------------------------------------------
# vivid style: saturated plastic/pharma parts on pastel backdrops, tissue-like and marble textures

_VIVID_HUES = ((0.85, 0.2, 0.2), (0.2, 0.45, 0.85), (0.95, 0.6, 0.1), (0.2, 0.7, 0.35), (0.6, 0.25, 0.75))
_VIVID_BACKDROPS = ((0.96, 0.92, 0.72), (0.75, 0.88, 0.95), (0.9, 0.8, 0.9))


def _vivid_backdrop(rng: np.random.Generator, size: int) -> FloatImage:
    return _background(
        rng, size, _jitter(rng, _VIVID_BACKDROPS[rng.integers(len(_VIVID_BACKDROPS))], 0.04), 0.15
    )


def _render_ring(rng: np.random.Generator, size: int) -> _Rendered:
    """A glossy plastic O-ring: a torus-shaded annulus with a specular highlight."""
    bg = _vivid_backdrop(rng, size)
    yy, xx, scale = _pose(rng, size)
    r = np.hypot(yy, xx)
    r_out, r_in = 0.3 * size * scale, rng.uniform(0.17, 0.2) * size * scale
    cov = _coverage(r - r_out) * _coverage(r_in - r)
    t = np.clip((r - r_in) / (r_out - r_in), 0, 1)
    profile = np.sin(np.pi * t)
    light = rng.uniform(0, 2 * np.pi)
    facing = (np.cos(light) * xx + np.sin(light) * yy) / (r + 1e-6)
    colour = _jitter(rng, _VIVID_HUES[rng.integers(len(_VIVID_HUES))], 0.06)
    obj = _shade(colour, 0.45 + 0.55 * profile)
    spec = np.clip(profile * facing, 0, 1) ** 6 * 0.7
    return _object(bg, _blend(obj, np.ones(3), spec), cov)


def _render_tablet(rng: np.random.Generator, size: int) -> _Rendered:
    """A two-tone capsule: stadium outline, one coloured and one white half, rounded shading."""
    bg = _vivid_backdrop(rng, size)
    yy, xx, scale = _pose(rng, size)
    v, u = _rotate(yy, xx, rng.uniform(0, np.pi))
    half_len, radius = 0.3 * size * scale, 0.14 * size * scale
    sd = np.hypot(np.maximum(np.abs(u) - (half_len - radius), 0), v) - radius
    cov = _coverage(sd)
    rounded = 0.6 + 0.4 * np.sqrt(np.clip(-sd / radius, 0, 1))
    colour = _jitter(rng, _VIVID_HUES[rng.integers(len(_VIVID_HUES))], 0.06)
    white = _jitter(rng, (0.95, 0.94, 0.9), 0.03)
    half = _coverage(u)  # 1 on the u < 0 half
    tone = _blend(np.broadcast_to(white, (size, size, 3)).copy(), colour, half)
    seam = 0.25 * np.exp(-np.abs(u) / 0.6)
    return _object(bg, np.clip(tone * (rounded - seam)[..., None], 0, 1), cov)


def _render_cells(rng: np.random.Generator, size: int) -> _Rendered:
    """Stained tissue: Voronoi cells with membranes and nuclei, in pink and purple."""
    k = int(rng.integers(5, 7))
    step = size / k
    gy, gx = np.mgrid[-1 : k + 1, -1 : k + 1].astype(np.float64)
    pts = np.stack([(gy + 0.5) * step, (gx + 0.5) * step], -1).reshape(-1, 2)
    pts += rng.uniform(-0.35, 0.35, pts.shape) * step
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.hypot(yy[..., None] - pts[:, 0], xx[..., None] - pts[:, 1])
    order = np.argsort(d, axis=-1)
    nearest = order[..., 0]
    d_sorted = np.take_along_axis(d, order[..., :2], axis=-1)
    membrane = _coverage(d_sorted[..., 1] - d_sorted[..., 0] - 0.9 * size / 64)
    nucleus = _coverage(d_sorted[..., 0] - rng.uniform(0.18, 0.24) * step)
    base = _jitter(rng, (0.95, 0.68, 0.8), 0.04)
    cell_tint = rng.uniform(0.85, 1.05, (len(pts), 1)) * base
    img = np.clip(cell_tint[nearest], 0, 1)
    img = _blend(img, _jitter(rng, (0.55, 0.2, 0.55), 0.04), membrane * 0.9)
    img = _blend(img, _jitter(rng, (0.35, 0.12, 0.5), 0.04), nucleus)
    return _texture(img)


def _render_marble(rng: np.random.Generator, size: int) -> _Rendered:
    """Polished green marble: turbulent sinusoidal veins in cream and gold."""
    yy, xx = _grid(size)
    angle = rng.uniform(0, np.pi)
    turbulence = _smooth_noise(rng, size, size / 10) + 0.5 * _smooth_noise(rng, size, size / 20)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / (size / rng.uniform(2.5, 3.5)) + 0.8 * turbulence
    veins = (1.0 - np.abs(np.sin(np.pi * phase))) ** 5
    base = _shade(_jitter(rng, (0.1, 0.5, 0.45), 0.05), 0.9 + 0.1 * _smooth_noise(rng, size, 2.0))
    img = _blend(base, _jitter(rng, (0.93, 0.9, 0.75), 0.03), veins)
    fine = (1.0 - np.abs(np.sin(np.pi * (2.3 * phase + 0.5 * turbulence)))) ** 12
    return _texture(_blend(img, _jitter(rng, (0.9, 0.72, 0.25), 0.04), 0.6 * fine))


STYLES: dict[str, _Style] = {
    "industrial": _Style(
        description="grey metal parts on a dark conveyor; technical fabric and brushed steel",
        categories={
            "disc": _Category("object", "machined steel washer", _render_disc),
            "plate": _Category("object", "aluminium plate with corner screw holes", _render_plate),
            "weave": _Category("texture", "plain-weave technical fabric", _render_weave),
            "grain": _Category("texture", "brushed stainless steel", _render_grain),
        },
        stain_colours=((0.55, 0.3, 0.12), (0.35, 0.22, 0.1), (0.45, 0.4, 0.15)),
        noise_sigma=(0.01, 0.02),
    ),
    "vivid": _Style(
        description="saturated plastic and pharma parts on pastel backdrops; tissue and marble",
        categories={
            "ring": _Category("object", "glossy plastic O-ring", _render_ring),
            "tablet": _Category("object", "two-tone capsule", _render_tablet),
            "cells": _Category("texture", "stained tissue cells", _render_cells),
            "marble": _Category("texture", "green veined marble", _render_marble),
        },
        stain_colours=((0.15, 0.2, 0.6), (0.8, 0.4, 0.05), (0.12, 0.1, 0.1)),
        noise_sigma=(0.008, 0.015),
    ),
}


# --------------------------------------------------------------------------------------------------
# defects: each returns the defective float image; the mask is derived afterwards from the 8-bit diff


def _pick_centre(rng: np.random.Generator, foreground: np.ndarray, min_inside: float) -> tuple[float, float]:
    """A random point at least ``min_inside`` px inside the object (or the image, for textures)."""
    padded = np.pad(foreground > 0.5, 1)
    inside = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    ok = inside >= min_inside
    if not ok.any():
        ok = inside >= inside.max()
    ys, xs = np.nonzero(ok)
    i = int(rng.integers(len(ys)))
    return float(ys[i]), float(xs[i])


def _pick_edge(rng: np.random.Generator, foreground: np.ndarray) -> tuple[float, float]:
    """A random point on the object just inside its outline (where a chunk can break off)."""
    inside = ndimage.distance_transform_edt(np.pad(foreground > 0.5, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero((inside >= 1) & (inside <= 3))
    i = int(rng.integers(len(ys)))
    return float(ys[i]), float(xs[i])


def _contrast_colour(rng: np.random.Generator, image: FloatImage, cy: float, cx: float) -> np.ndarray:
    """Dark on light surfaces and bright on dark ones, so a thin mark is always visible."""
    size = image.shape[0]
    y0, y1 = max(int(cy) - 4, 0), min(int(cy) + 5, size)
    x0, x1 = max(int(cx) - 4, 0), min(int(cx) + 5, size)
    lum = float(image[y0:y1, x0:x1].mean())
    grey = rng.uniform(0.05, 0.2) if lum > 0.45 else rng.uniform(0.85, 0.97)
    return np.clip(grey + rng.uniform(-0.03, 0.03, 3), 0, 1)


def _scratch(rng: np.random.Generator, r: _Rendered, img: FloatImage, style: _Style) -> FloatImage:
    size = img.shape[0]
    s = size / 64
    cy, cx = _pick_centre(rng, r.foreground, 3 * s)
    angle = rng.uniform(0, np.pi)
    half = rng.uniform(0.12, 0.22) * size
    dy, dx = np.sin(angle), np.cos(angle)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    along = np.clip((yy - cy) * dy + (xx - cx) * dx, -half, half)
    dist = np.hypot(yy - (cy + along * dy), xx - (cx + along * dx))
    line = (dist <= max(0.5, rng.uniform(0.5, 1.0) * s)).astype(np.float64)
    line *= r.foreground > 0.5
    return _blend(img, _contrast_colour(rng, img, cy, cx), line)


def _hole(rng: np.random.Generator, r: _Rendered, img: FloatImage, style: _Style) -> FloatImage:
    size = img.shape[0]
    a, b = rng.uniform(0.035, 0.07, 2) * size
    cy, cx = _pick_centre(rng, r.foreground, min(a, b) + 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    v, u = _rotate(yy - cy, xx - cx, rng.uniform(0, np.pi))
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    shade = rng.uniform(0.02, 0.1) + 0.08 * np.clip((u / a) ** 2 + (v / b) ** 2, 0, 1)  # darker centre
    hole = np.clip(shade[..., None] + rng.uniform(0, 0.02, 3), 0, 1)
    return np.where((inside & (r.foreground > 0.5))[..., None], hole, img)


def _stain(rng: np.random.Generator, r: _Rendered, img: FloatImage, style: _Style) -> FloatImage:
    size = img.shape[0]
    cy, cx = _pick_centre(rng, r.foreground, 0.05 * size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    blob = np.zeros((size, size))
    for _ in range(int(rng.integers(2, 5))):
        oy, ox = rng.normal(0, 0.04 * size, 2)
        a, b = rng.uniform(0.03, 0.07, 2) * size
        v, u = _rotate(yy - cy - oy, xx - cx - ox, rng.uniform(0, np.pi))
        blob = np.maximum(blob, ((u / a) ** 2 + (v / b) ** 2 <= 1.0).astype(np.float64))
    alpha = ndimage.gaussian_filter(blob, 1.2 * size / 64) * rng.uniform(0.7, 0.9)
    alpha = np.where(alpha >= 0.15, alpha, 0.0) * (r.foreground > 0.5)
    # a stain the colour of the surface would be invisible: pick among the colours that stand out
    local = img[alpha > 0].mean(axis=0) if (alpha > 0).any() else img.reshape(-1, 3).mean(axis=0)
    palette = np.asarray(style.stain_colours)
    distance = np.abs(palette - local).sum(axis=1)
    visible = np.nonzero(distance >= 0.35)[0]
    pick = int(rng.choice(visible)) if len(visible) else int(np.argmax(distance))
    return _blend(img, _jitter(rng, palette[pick], 0.04), alpha)


def _missing_part(rng: np.random.Generator, r: _Rendered, img: FloatImage, style: _Style) -> FloatImage:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if (r.foreground < 0.5).any():  # object: a chunk at the outline breaks off, showing the backdrop
        cy, cx = _pick_edge(rng, r.foreground)
        a, b = rng.uniform(0.08, 0.14, 2) * size
        v, u = _rotate(yy - cy, xx - cx, rng.uniform(0, np.pi))
        chunk = ((u / a) ** 2 + (v / b) ** 2 <= 1.0).astype(np.float64)
        return _blend(img, r.background, chunk)
    # texture: a patch where the pattern is gone, leaving flat material
    half_a, half_b = rng.uniform(0.07, 0.12, 2) * size
    cy, cx = _pick_centre(rng, r.foreground, max(half_a, half_b))
    v, u = _rotate(yy - cy, xx - cx, rng.uniform(0, np.pi))
    patch = (np.abs(u) <= half_a) & (np.abs(v) <= half_b)
    # worn-through (darker) or bleached (lighter) material, far enough from the mean to be visible
    mean = img[patch].mean(axis=0)
    amount = rng.uniform(0.3, 0.4)
    flat = mean * (1 - amount) if rng.random() < 0.5 else mean + (1 - mean) * amount
    return np.where(patch[..., None], flat, img)


_DEFECTS: dict[str, Callable[[np.random.Generator, _Rendered, FloatImage, _Style], FloatImage]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "missing_part": _missing_part,
}


# --------------------------------------------------------------------------------------------------
# sampling


def _stable_id(text: str) -> int:
    """A process-independent integer for a name (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, style: str, category: str, split: str, index: int) -> np.random.Generator:
    entropy = [seed, _stable_id(style), _stable_id(category), _stable_id(split), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _to_uint8(img: FloatImage) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def render_sample(
    seed: int, style: str, category: str, split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (uint8 HxWx3) and, for a defect split such as ``"test/hole"``, its boolean mask."""
    clean, defective, mask = render_defect_pair(seed, style, category, split, index, image_size)
    return (clean, None) if defective is None else (defective, mask)


def render_defect_pair(
    seed: int, style: str, category: str, split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The defect-free twin, the defective image and the mask (the last two None for good splits).

    Normal images get a random pose, colour and exposure jitter and sensor noise. A defect is drawn
    on the noise-free exposure and the same noise field is added to both versions, so the mask is
    exactly the pixels whose 8-bit value differs from the twin. Exposed for tests and visual checks.
    """
    st = STYLES[style]
    rng = _rng(seed, style, category, split, index)
    rendered = st.categories[category].render(rng, image_size)
    # exposure and a slight white-balance shift; per-channel offsets would tint the greys
    gain = rng.uniform(0.93, 1.07) * rng.uniform(0.985, 1.015, 3)
    offset = rng.uniform(-0.03, 0.03)
    exposed = _Rendered(
        image=rendered.image * gain + offset,
        background=rendered.background * gain + offset,
        foreground=rendered.foreground,
    )
    noise = rng.normal(0.0, rng.uniform(*st.noise_sigma), (image_size, image_size, 3))
    clean = _to_uint8(exposed.image + noise)
    defect = split.split("/", 1)[1]
    if defect == "good":
        return clean, None, None
    min_pixels = max(6, int(0.002 * image_size * image_size))
    for _ in range(50):
        defective = _to_uint8(_DEFECTS[defect](rng, exposed, exposed.image, st) + noise)
        mask = (defective != clean).any(axis=-1)
        if mask.sum() >= min_pixels:
            return clean, defective, mask
    raise RuntimeError(
        f"could not place a visible {defect!r} on {style}/{category} #{index}"
    )  # pragma: no cover
