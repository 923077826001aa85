"""AnoVL on VisA as the authors' ``vis_test.py`` script does it: their tiled VisA protocol
(docs/methods.md#anovl, "VisA"; ``method.visa_protocol=vis_test``, chosen in protocol.py).

The image arrives with its short side resized to the model's size ``S`` and no crop (``S x W``, ``W >= S``).
It is cut into two overlapping ``S x S`` tiles, the left and the right end (``image_tiling``); everything
per tile is AnoVL's single-view forward, and the tiles' maps, upsampled to ``S x S`` each, are put back
on the ``S x W`` canvas, averaged where they overlap (``image_recover``):

- image score: the class tokens' anomaly softmax (raw cosines), averaged over the two tiles (no 22 views);
- map: per-patch anomaly softmax, 3x3 average pooling (replicate padding), bilinear upsampling of each
  tile (``align_corners=True``), merged;
- TTA: a ``D x D`` adapter ``f' = 0.5 f + 0.5 (W f/|f| + b)`` (the authors' ``Adapter``, not vl_test.py's
  prompt-span ``TextAdapter``), 5 AdamW steps per image with one optimizer per category whose moments
  carry over while the adapter is re-initialised per image (``tta.reset``), on the loss
  ``H(p(f')) + 0.5 [-log p_a(f~') - log p_n(f')]`` computed on the *merged, upsampled* cosine maps
  (the logits are upsampled and merged, then the softmax is taken per pixel), with feature noise
  ``f~ = f + N(0, 0.055^2)`` on both tiles.

Images are processed one at a time, in the order they arrive, as the authors' loop does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ZsadError
from lightning_modules.anovl.config import TTAConfig
from lightning_modules.anovl.model import ABNORMAL, NORMAL
from lightning_modules.anovl.tta import category_adapter, check_tta_config, feature_noise, require_autograd
from lightning_modules.ops import gaussian_blur, l2_normalize

if TYPE_CHECKING:
    from lightning_modules.anovl.model import AnoVL


def tile_pair(image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[1, C, S, W]`` -> the left and right ``S x S`` tiles ``[2, C, S, S]`` and the offset ``W - S`` of
    the right one (``image_tiling``). The authors' code needs ``S <= W <= 2 S``; other shapes are refused."""
    height, width = image.shape[-2:]
    if not height <= width <= 2 * height:
        raise ZsadError(
            f"AnoVL's vis_test.py protocol tiles images of height S and width S..2S (landscape, after the "
            f"short side is resized to S), got {height}x{width}: use method.visa_protocol=vl_test for it"
        )
    offset = width - height
    return torch.cat([image[..., :height], image[..., offset:]]), offset


def merge_tiles(tiles: torch.Tensor, offset: int) -> torch.Tensor:
    """``[2 * M, C, S, S]`` (M pairs, left tiles first) -> ``[M, C, S, S + offset]``: each tile's own part,
    the mean of both where they overlap (``image_recover``)."""
    m = tiles.shape[0] // 2
    left, right = tiles[:m], tiles[m:]
    size = tiles.shape[-1]
    parts = [left[..., :offset], (left[..., offset:] + right[..., : size - offset]) / 2]
    return torch.cat([*parts, right[..., size - offset :]], dim=-1)


class FeatureAdapter(nn.Module):
    """The authors' ``Adapter``: ``0.5 f + 0.5 (W f/|f| + b)`` with ``W`` ``D x D``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """``nn.Linear``'s default initialisation ``U(-1/sqrt(D), 1/sqrt(D))`` from the image's generator
        (weight, then bias)."""
        bound = 1.0 / math.sqrt(self.linear.in_features)
        for p in (self.linear.weight, self.linear.bias):
            p.copy_(((torch.rand(p.shape, generator=generator) * 2 - 1) * bound).to(p))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return 0.5 * tokens + 0.5 * self.linear(tokens / tokens.norm(dim=-1, keepdim=True))


def tile_logits(tokens: torch.Tensor, classes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cosines ``[T, 2, h, w]`` of tile tokens ``[T, N, D]`` with ``classes [2, D]``."""
    cosines = l2_normalize(tokens) @ classes.T.to(tokens.dtype)
    return cosines.transpose(1, 2).reshape(tokens.shape[0], 2, *grid)


def upsample_merge(maps: torch.Tensor, size: int, offset: int) -> torch.Tensor:
    """``[2 * M, C, h, w]`` tile maps -> ``[M, C, S, S + offset]``: each upsampled to ``S x S``, merged."""
    upsampled = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)
    return merge_tiles(upsampled, offset)


def vis_test_loss(
    adapter: FeatureAdapter,
    tokens: torch.Tensor,
    noise: torch.Tensor,
    classes: torch.Tensor,
    grid: tuple[int, int],
    size: int,
    offset: int,
    cfg: TTAConfig,
) -> torch.Tensor:
    """vis_test.py's loss on the merged maps: ``tokens [2, N, D]`` (the tiles), ``noise [M, 2, N, D]``."""
    stacked = torch.cat([tokens[None], tokens[None] + noise]).flatten(0, 1)  # clean tiles, then noisy
    logits = tile_logits(adapter(stacked), classes, grid)  # [2 (M + 1), 2, h, w], tiles of a pair apart
    pairs = logits.view(-1, 2, *logits.shape[1:])  # [M + 1, 2 tiles, 2, h, w]
    merged = upsample_merge(pairs.transpose(0, 1).flatten(0, 1), size, offset)  # [M + 1, 2, S, W]
    log_p = merged.log_softmax(dim=1)
    clean, noisy = log_p[0], log_p[1:]
    entropy = -(clean.exp() * clean).sum(dim=0).mean()
    hard = -noisy[:, ABNORMAL].mean() - clean[NORMAL].mean()
    return cfg.entropy_weight * entropy + cfg.hard_weight * hard


class TiledAdaptation:
    """vis_test.py's TTA, image by image: one adapter and AdamW per category (``tta.reset``)."""

    __test__ = False

    def __init__(self, cfg: TTAConfig) -> None:
        check_tta_config(cfg)
        self.cfg = cfg
        self._persistent: dict[str, tuple[FeatureAdapter, torch.optim.Optimizer]] = {}
        self.last_losses: list[float] = []

    def reset(self) -> None:
        self._persistent.clear()

    def adapt(
        self,
        tokens: torch.Tensor,
        classes: torch.Tensor,
        grid: tuple[int, int],
        size: int,
        offset: int,
        category: str,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Adapted tile tokens ``[2, N, D]`` of one image (no gradient attached): the category's adapter and
        AdamW under ``tta.reset`` (:func:`~.tta.category_adapter`)."""
        require_autograd()
        tokens = tokens.detach().float()
        adapter, optimizer = category_adapter(
            self._persistent,
            category,
            self.cfg,
            lambda: FeatureAdapter(tokens.shape[-1]).to(tokens.device),
            lambda a: a.reset_parameters(generator),
        )
        self.last_losses = []
        noise_shape = (self.cfg.noise_copies, *tokens.shape)
        with torch.enable_grad():
            for _ in range(self.cfg.steps):
                noise = feature_noise([generator], noise_shape, self.cfg.noise_std, tokens.device)[0]
                loss = vis_test_loss(adapter, tokens, noise, classes, grid, size, offset, self.cfg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.last_losses.append(float(loss.detach()))
        with torch.no_grad():
            return adapter(tokens)


def vis_test_predict(
    model: AnoVL,
    images: torch.Tensor,
    classes: torch.Tensor,
    size: tuple[int, int],
    tta: TiledAdaptation | None = None,
    generators: Sequence[torch.Generator] = (),
    categories: Sequence[str] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image scores [B], pooled tile grids [B, 2, h, w], maps [B, *size])`` of images ``[B, 3, S, W]``
    (one shape per batch), ``classes [B, 2, D]``; images one after another (the authors' loop). The maps
    are at ``S x W`` (the authors' mask size) and resized bilinearly to ``size`` when that differs."""
    scores, grids, maps = [], [], []
    side = images.shape[-2]
    for i in range(images.shape[0]):
        tiles, offset = tile_pair(images[i : i + 1])
        features = model.encode(tiles)
        logits = features.class_embedding @ classes[i].T.to(features.class_embedding.dtype)
        scores.append((logits / model.cfg.image_temperature).softmax(dim=-1)[:, ABNORMAL].mean())
        tokens = features.patch_tokens
        if tta is not None:
            tokens = tta.adapt(tokens, classes[i], features.grid, side, offset, categories[i], generators[i])
        grid = model.anomaly_grid(tokens, classes[i : i + 1].expand(2, -1, -1), features.grid)
        grids.append(grid)
        merged = upsample_merge(grid[:, None], side, offset)
        if tuple(merged.shape[-2:]) != tuple(size):
            merged = F.interpolate(merged, size=size, mode="bilinear", align_corners=True)
        maps.append(gaussian_blur(merged[:, 0], model.cfg.gaussian_sigma)[0])
    return torch.stack(scores), torch.stack(grids), torch.stack(maps)
