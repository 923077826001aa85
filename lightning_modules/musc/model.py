"""MuSc as plain torch on a frozen backbone (CLIP, DINO or DINOv2): features of one image batch at a time,
scores of a whole set.

- :meth:`MuSc.extract`: the tokens of the configured layers (class token first) and the class embedding of
  each image, from the configured backbone family (musc/features.py: CLIP, DINO or DINOv2);
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
from lightning_modules.musc.config import BACKBONE_FAMILIES, MuScConfig
from lightning_modules.musc.features import ClipFeatures, DinoFeatures
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


class MuSc(nn.Module):
    """MuSc on a frozen backbone: ``cfg.backbone_family`` picks CLIP (``clip_model``, ``tokenizer``: a given
    open_clip model instead of ``cfg.backbone``'s) or DINO / DINOv2 (``dino_model``: a given timm ViT instead
    of ``cfg.dino``'s)."""

    def __init__(
        self,
        cfg: MuScConfig,
        clip_model: nn.Module | None = None,
        tokenizer=None,
        dino_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        require_choices(("backbone_family", cfg.backbone_family, BACKBONE_FAMILIES))
        if not cfg.r_list:
            raise ConfigError("musc r_list must name at least one aggregation degree")
        self.cfg = cfg
        self.features: ClipFeatures | DinoFeatures = (
            ClipFeatures(cfg, clip_model, tokenizer)
            if cfg.backbone_family == "clip"
            else DinoFeatures(cfg, dino_model)
        )
        self.image_size = self.features.image_size
        self.width = self.features.width
        self.embedding_dim = self.features.embedding_dim
        self.n_layers = len(cfg.feature_layers)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.features.grid, self.features.grid)

    def autocast(self, device: torch.device):
        """fp16 autocast on CUDA when ``amp`` (the authors' ``torch.cuda.amp.autocast()``), else nothing."""
        return torch.autocast("cuda", enabled=self.cfg.amp and device.type == "cuda")

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([B, 1 + N, width] per configured layer, class embeddings [B, D])`` (musc/features.py)."""
        with self.autocast(images.device):
            tokens, embedding = self.features(images)
        return tokens, embedding.float()

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
