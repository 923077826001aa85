"""Image-space pseudo-anomalies for test-time adaptation (DRAEM-style, no extra dependencies).

A thresholded Perlin-noise field gives an irregular mask; inside it the image is blended with a foreign
texture: ``x~ = (1 - M) x + M (beta x + (1 - beta) T)``, ``beta ~ U(0, max_opacity)``. The texture is a
coloured Perlin pattern (default: depends only on the image's own generator, so the result does not
depend on the batch) or another image of the batch. Images are CLIP-normalised; textures are made in
[0, 1] and normalised the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from datamodules.transforms import CLIP_MEAN, CLIP_STD

_MIN_AREA = 0.005  # a mask smaller than this (fraction of pixels) is drawn again


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """2-D gradient (Perlin) noise ``[H, W]`` with ``res`` lattice cells per side, values in about [-1, 1]."""
    (h, w), (ry, rx) = shape, res
    cell_y, cell_x = math.ceil(h / ry), math.ceil(w / rx)
    y = torch.arange(cell_y * ry, dtype=torch.float32)[:h] / cell_y
    x = torch.arange(cell_x * rx, dtype=torch.float32)[:w] / cell_x
    iy, ix = y.long(), x.long()
    fy, fx = y - iy, x - ix
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=generator)
    gradients = torch.stack([angles.cos(), angles.sin()], dim=-1)

    def corner(oy: int, ox: int) -> torch.Tensor:
        g = gradients[(iy + oy)[:, None], (ix + ox)[None, :]]  # [H, W, 2]
        return g[..., 0] * (fy - oy)[:, None] + g[..., 1] * (fx - ox)[None, :]

    u, v = _fade(fy)[:, None], _fade(fx)[None, :]
    top = torch.lerp(corner(0, 0), corner(0, 1), v)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), v)
    return math.sqrt(2) * torch.lerp(top, bottom, u)


def _scale(generator: torch.Generator, low: int, high: int) -> int:
    return 2 ** int(torch.randint(low, max(high, low + 1), (1,), generator=generator))


def perlin_mask(
    size: tuple[int, int],
    generator: torch.Generator,
    min_scale: int = 0,
    max_scale: int = 6,
    threshold: float = 0.5,
    tries: int = 8,
) -> torch.Tensor:
    """Binary ``[H, W]`` float mask ``noise > threshold``; never empty (after ``tries`` the top 5% is used)."""
    noise = None
    for _ in range(tries):
        res = (_scale(generator, min_scale, max_scale), _scale(generator, min_scale, max_scale))
        noise = perlin_noise(size, res, generator)
        mask = (noise > threshold).float()
        if mask.mean() >= _MIN_AREA:
            return mask
    return (noise >= noise.flatten().quantile(0.95)).float()


def procedural_texture(
    size: tuple[int, int], generator: torch.Generator, min_scale: int = 0, max_scale: int = 6
) -> torch.Tensor:
    """A coloured fractal-Perlin texture ``[3, H, W]`` in [0, 1]."""
    base = _scale(generator, max(min_scale, 1), max_scale)
    pattern = sum(perlin_noise(size, (base * 2**o, base * 2**o), generator) / 2**o for o in range(3))
    pattern = (pattern - pattern.min()) / (pattern.max() - pattern.min()).clamp_min(1e-6)
    low, high = torch.rand(3, generator=generator), torch.rand(3, generator=generator)
    return low[:, None, None] + (high - low)[:, None, None] * pattern[None]


def synthesize_anomalies(
    images: torch.Tensor,
    generators: Sequence[torch.Generator],
    texture: str = "procedural",
    min_scale: int = 0,
    max_scale: int = 6,
    threshold: float = 0.5,
    max_opacity: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images with pseudo-anomalies [B, 3, H, W], masks [B, H, W])`` for CLIP-normalised ``images``."""
    b, _, h, w = images.shape
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    out, masks = [], []
    for i, generator in enumerate(generators):
        mask = perlin_mask((h, w), generator, min_scale, max_scale, threshold)
        if texture == "batch" and b > 1:
            foreign = images[(i + 1) % b].detach().cpu().float()
        elif texture in ("batch", "procedural"):
            foreign = (procedural_texture((h, w), generator, min_scale, max_scale) - mean) / std
        else:
            raise ValueError(f"texture must be 'procedural' or 'batch', got {texture!r}")
        beta = float(torch.rand(1, generator=generator)) * max_opacity
        image = images[i].detach().cpu().float()
        blended = image * (1 - mask) + mask * (beta * image + (1 - beta) * foreign)
        out.append(blended)
        masks.append(mask)
    return torch.stack(out).to(images), torch.stack(masks).to(images.device)
