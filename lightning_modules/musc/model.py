"""MuSc as plain torch on a frozen CLIP: features of one image batch at a time, scores of a whole set.

- :meth:`MuSc.extract`: the residual stream after the configured blocks (class token first) and the
  L2-normalised CLIP image embedding of each image;
- :meth:`MuSc.score_category`: for each LNAMD degree ``r`` and each layer, MSM within each subset of the
  category (:func:`divide_subsets`); the mean over layers, then over degrees, bilinearly upsampled
  (align_corners=True) in float64; image score = max of the map, re-scored by RsCIN over the category.

The authors' code (xrli-U/MuSc models/musc.py) does the same per category, one image pair at a time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError, require_choices
from lightning_modules.clip.factory import authors_activation, clip_with_activation
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.musc.config import ACTIVATIONS, MuScConfig
from lightning_modules.musc.scoring import aggregate_neighbourhood, mutual_scores, rescore_images


def divide_subsets(defect_types: Sequence[str], divide_num: int, seed: int) -> list[list[int]]:
    """Indices of each of ``divide_num`` subsets, as the authors' ``sub_datasets`` (datasets/mvtec.py).

    ``defect_types`` are the images' defect folders in the dataset's order (sorted by defect type, then file
    name, as their loader lists them). Per type (in order of first appearance) the indices are shuffled by
    Python's ``random`` seeded once with ``seed``, cut into runs of ``divide_num``, and subset ``i`` takes the
    ``i``-th index of each run. ``divide_num`` 1 (or 0): one subset, the dataset's order."""
    if divide_num < 0:
        raise ConfigError(f"musc divide_num must be >= 0, got {divide_num}")
    if divide_num <= 1:
        return [list(range(len(defect_types)))]
    rng = random.Random(seed)
    by_type: dict[str, list[int]] = {}
    for i, kind in enumerate(defect_types):
        by_type.setdefault(kind, []).append(i)
    subsets: list[list[int]] = [[] for _ in range(divide_num)]
    for indices in by_type.values():
        rng.shuffle(indices)
        for start in range(0, len(indices), divide_num):
            for subset, index in enumerate(indices[start : start + divide_num]):
                subsets[subset].append(index)
    return subsets


class MuSc(FrozenCLIP):
    def __init__(self, cfg: MuScConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        require_choices(("activation", cfg.activation, ACTIVATIONS))
        clip_model, tokenizer, self_activation = clip_with_activation(
            cfg.backbone,
            clip_model,
            tokenizer,
            lambda model: authors_activation(cfg.activation, cfg.backbone.image_size, model),
        )
        super().__init__(cfg.backbone, clip_model, tokenizer)
        self.cfg = cfg
        self.activation = self_activation
        self.blocks = [layer + 1 for layer in cfg.feature_layers]  # the authors' ``features_list``
        if not self.blocks or min(self.blocks) < 1 or max(self.blocks) > self.vision.depth:
            raise ConfigError(
                f"musc feature_layers {cfg.feature_layers} must lie in 0..{self.vision.depth - 1} "
                f"(0-based blocks of {cfg.backbone.name})"
            )
        if not cfg.r_list:
            raise ConfigError("musc r_list must name at least one aggregation degree")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.vision.grid, self.vision.grid)

    def autocast(self, device: torch.device):
        """fp16 autocast on CUDA when ``amp`` (the authors' ``torch.cuda.amp.autocast()``), else nothing."""
        return torch.autocast("cuda", enabled=self.cfg.amp and device.type == "cuda")

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([B, 1 + N, width] per configured layer, L2-normalised image embeddings [B, D])``."""
        with self.autocast(images.device):
            features = self.vision(images, layers=self.blocks)
            embedding = self.vision.project(features.class_token)
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return [features.tokens[b] for b in self.blocks], embedding.float()

    @torch.no_grad()
    def patch_scores(self, layer_tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """MSM patch scores ``[N, patches]`` (float64) of one set: mean over layers, then over degrees."""
        per_degree = []
        for r in self.cfg.r_list:
            per_layer = []
            for tokens in layer_tokens:
                with self.autocast(tokens.device):
                    z = aggregate_neighbourhood(tokens, self.grid, r)
                per_layer.append(
                    mutual_scores(
                        z.float(), self.cfg.topmin_min, self.cfg.topmin_max, self.cfg.distance_block_elements
                    )
                )
            per_degree.append(torch.stack(per_layer).mean(dim=0))
        return torch.stack(per_degree).mean(dim=0)

    def upsample(self, grids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Patch grids ``[N, patches]`` as maps ``[N, H, W]``: bilinear, align_corners=True (models/musc.py)."""
        return F.interpolate(grids.view(-1, 1, *self.grid), size=size, mode="bilinear", align_corners=True)[
            :, 0
        ]

    @torch.no_grad()
    def category_grids_and_scores(
        self,
        layer_tokens: Sequence[torch.Tensor],
        embeddings: torch.Tensor,
        subsets: Sequence[Sequence[int]],
        size: tuple[int, int],
        k_list: Sequence[int],
        chunk: int = 16,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(patch grids [N, patches] float64, image scores [N])`` of a category's ``N`` images
        (``layer_tokens``: ``[N, 1 + patches, width]`` per layer), MSM run within each of ``subsets``; the
        image score before RsCIN is the maximum of the map upsampled to ``size`` (``chunk`` images at a time)."""
        n = embeddings.shape[0]
        grids = torch.empty(n, self.grid[0] * self.grid[1], dtype=torch.float64, device=embeddings.device)
        for subset in subsets:
            index = torch.as_tensor(list(subset), dtype=torch.long, device=embeddings.device)
            grids[index] = self.patch_scores([t[index.to(t.device)] for t in layer_tokens]).to(grids.device)
        maxima = torch.cat(
            [self.upsample(grids[i : i + chunk], size).flatten(1).amax(dim=1) for i in range(0, n, chunk)]
        )
        return grids, rescore_images(maxima, embeddings, k_list)

    @torch.no_grad()
    def score_category(
        self,
        layer_tokens: Sequence[torch.Tensor],
        embeddings: torch.Tensor,
        subsets: Sequence[Sequence[int]],
        size: tuple[int, int],
        k_list: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [N], maps [N, H, W] float64)``: :meth:`category_grids_and_scores`, upsampled."""
        grids, scores = self.category_grids_and_scores(layer_tokens, embeddings, subsets, size, k_list)
        return scores, self.upsample(grids, size)
