"""CMER: occlusion relevance from image-text matching, to discard image regions irrelevant to the text.

[design choice, docs/methods.md#cmg] The image is cut into a ``grid x grid`` partition; each region ``k`` is
filled in turn and ``r_k = s(x) - s(x with region k filled)`` with ``s`` the cosine between the CLIP image
embedding and the image's text embedding. Regions with the largest ``r_k`` (those whose loss lowers the
match most) are kept; the others are discarded. Relevance depends only on the frozen CLIP, the image and
its text, so it is computed once per image and cached (in memory, optionally on disk).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from datamodules.atomic_io import atomic_torch_save
from datamodules.errors import ConfigError
from lightning_modules.checkpoint_io import safe_torch_load

FILLS = ("mean", "image_mean")
APPLY_TO = ("tokens", "pixels")
CACHE_FORMAT = 1  # bump when the relevance computation changes, so old cache files are ignored


def cell_regions(size: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """Region row (or column) of each of ``size`` cells: the region containing the cell's centre.

    Pixels and token grids both use this, so a region means the same area at every resolution.
    """
    return ((torch.arange(size, device=device) + 0.5) * grid / size).floor().long().clamp_max(grid - 1)


def regions_to_grid(keep: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """``keep [B, grid*grid]`` (per region) -> ``[B, h, w]`` (per cell of an ``h x w`` grid), same dtype."""
    rows = cell_regions(size[0], grid, keep.device)
    cols = cell_regions(size[1], grid, keep.device)
    region = rows[:, None] * grid + cols[None, :]  # [h, w]
    return keep[:, region]


def fill_regions(images: torch.Tensor, discard: torch.Tensor, grid: int, fill: str) -> torch.Tensor:
    """Images with the regions flagged in ``discard [B, grid*grid]`` replaced by the fill value."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    pixel_discard = regions_to_grid(discard, grid, tuple(images.shape[-2:]))[:, None]  # [B, 1, H, W]
    value = (
        images.mean(dim=(2, 3), keepdim=True)
        if fill == "image_mean"
        else torch.zeros_like(images[:, :, :1, :1])
    )
    return torch.where(pixel_discard, value.expand_as(images), images)


def occluded_views(
    images: torch.Tensor, grid: int, fill: str, views: torch.Tensor | None = None
) -> torch.Tensor:
    """Views ``[n, 3, H, W]`` of the batch, by flat view id ``v = image * (1 + R) + j``: ``j = 0`` is the image
    itself, ``j = k + 1`` the image with region ``k`` (row-major) filled. Default: all ``B * (1 + R)`` views."""
    regions = grid * grid
    if views is None:
        views = torch.arange(images.shape[0] * (1 + regions), device=images.device)
    image_ids, j = views // (1 + regions), views % (1 + regions)
    discard = F.one_hot(j, 1 + regions)[:, 1:].bool()  # j = 0 discards nothing
    return fill_regions(images[image_ids], discard, grid, fill)


def occlusion_relevance(
    images: torch.Tensor,
    text_embeddings: torch.Tensor,
    embed_images: Callable[[torch.Tensor], torch.Tensor],
    grid: int,
    fill: str = "mean",
    chunk_size: int = 64,
) -> torch.Tensor:
    """``r [B, grid*grid]``: drop of the image-text cosine when each region is filled.

    The ``B * (1 + grid^2)`` views are built and embedded ``chunk_size`` at a time (bounded memory) by
    ``embed_images`` (images -> ``[n, D]``); ``text_embeddings [B, D]`` holds each image's own text.
    """
    b, regions = images.shape[0], grid * grid
    all_views = torch.arange(b * (1 + regions), device=images.device)
    embeddings = torch.cat(
        [embed_images(occluded_views(images, grid, fill, ids)) for ids in all_views.split(chunk_size)]
    )
    embeddings = F.normalize(embeddings.float(), dim=-1).reshape(b, 1 + regions, -1)
    text = F.normalize(text_embeddings.float(), dim=-1)
    scores = (embeddings * text[:, None]).sum(-1)  # [B, 1 + R]
    return scores[:, :1] - scores[:, 1:]


def keep_regions(
    relevance: torch.Tensor, keep_ratio: float = 0.75, threshold: float | None = None
) -> torch.Tensor:
    """Boolean ``[B, R]``: regions kept. ``threshold``: ``r_k > threshold`` (at least the most relevant
    region); otherwise the top ``ceil(keep_ratio * R)`` regions (at least one)."""
    b, regions = relevance.shape
    top = relevance.argmax(dim=1, keepdim=True)
    if threshold is not None:
        keep = relevance > threshold
    else:
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio must lie in (0, 1], got {keep_ratio}")
        n_keep = max(1, math.ceil(keep_ratio * regions))
        order = torch.argsort(relevance, dim=1, descending=True, stable=True)[:, :n_keep]
        keep = torch.zeros_like(relevance, dtype=torch.bool).scatter_(1, order, True)
    return keep.scatter(1, top, True)


class RelevanceCache:
    """Relevance per (image path, text), for one setting (backbone, grid, fill): in memory, and on disk in
    ``folder`` when given (one file per setting, merged with what other runs or ranks wrote)."""

    def __init__(self, settings: dict[str, Any], folder: str | Path | None = None) -> None:
        self.settings = {"format": CACHE_FORMAT, **settings}
        digest = hashlib.sha1(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
        self.path = Path(folder) / f"relevance-{digest}.pt" if folder else None
        self.entries: dict[str, torch.Tensor] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            self.entries.update(self._read())

    @staticmethod
    def key(image_path: str, text: str) -> str:
        return f"{image_path}\n{text}"

    def _read(self) -> dict[str, torch.Tensor]:
        try:
            payload = safe_torch_load(self.path)  # CRC-32s checked: a damaged file is never used
        except Exception:  # noqa: BLE001 - a corrupt or foreign file is only a cache miss
            return {}
        return payload.get("entries", {}) if payload.get("settings") == self.settings else {}

    def get(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        return [self.entries.get(k) for k in keys]

    def put(self, keys: Sequence[str], values: torch.Tensor) -> None:
        for key, value in zip(keys, values.detach().float().cpu(), strict=True):
            self.entries[key] = value.clone()
        self.dirty = True

    def save(self) -> None:
        """Write new entries (atomically); a no-op in memory-only mode or when nothing changed."""
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self._read(), **self.entries} if self.path.is_file() else dict(self.entries)
        atomic_torch_save({"settings": self.settings, "entries": merged}, self.path)
        self.dirty = False
