"""MuSc's feature extractors, one per backbone family (``MuScConfig.backbone_family``): per image batch, the
tokens of the configured layers ``[B, 1 + patches, width]`` (class token first; LNAMD drops it) and the class
embedding RsCIN compares images with ``[B, D]``. What each family hands over is the authors' models/musc.py
branch for it."""

from __future__ import annotations

import torch
from torch import nn

from datamodules.errors import ConfigError, require_choices
from lightning_modules.clip.factory import authors_activation, clip_with_activation
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.musc.config import ACTIVATIONS, MuScConfig


def _check_layers(layers: list[int], depth: int, name: str) -> None:
    if not layers or min(layers) < 0 or max(layers) >= depth:
        raise ConfigError(
            f"musc feature_layers {layers} must lie in 0..{depth - 1} (0-based blocks of {name})"
        )


class ClipFeatures(FrozenCLIP):
    """open_clip (their vendored factory): the residual stream after the configured blocks (no ``ln_post``)
    and the L2-normalised image embedding (``encode_image``, normalised in models/musc.py)."""

    def __init__(self, cfg: MuScConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        require_choices(("activation", cfg.activation, ACTIVATIONS))
        clip_model, tokenizer, self_activation = clip_with_activation(
            cfg.backbone,
            clip_model,
            tokenizer,
            lambda model: authors_activation(cfg.activation, cfg.backbone.image_size, model),
        )
        super().__init__(cfg.backbone, clip_model, tokenizer)
        self.activation = self_activation
        _check_layers(list(cfg.feature_layers), self.vision.depth, cfg.backbone.name)
        self.blocks = [layer + 1 for layer in cfg.feature_layers]  # the authors' ``features_list``
        self.grid = self.vision.grid
        self.image_size = self.vision.image_size
        self.width = self.vision.width
        self.embedding_dim = self.vision.output_dim

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features = self.vision(images, layers=self.blocks)
        embedding = self.vision.project(features.class_token)
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return [features.tokens[b] for b in self.blocks], embedding


def dino_blocks(family: str, layers: list[int], depth: int) -> list[int]:
    """The 0-based blocks the authors' code reads for ``feature_layers`` (models/musc.py): DINOv2's
    ``get_intermediate_layers(n=layers)`` takes the blocks themselves; DINO's ``get_intermediate_layers(n=m)``
    with ``m = max(layers) + 1`` returns the last ``m`` blocks (all of them when ``m`` >= depth), indexed by
    layer: block ``layer + max(depth - m, 0)``."""
    if family == "dinov2":
        return list(layers)
    return [layer + max(depth - max(layers) - 1, 0) for layer in layers]


class DinoFeatures(nn.Module):
    """timm's DINO / DINOv2 ViT (lightning_modules/dino/): the configured blocks' outputs after the final
    LayerNorm with the class token (DINOv2: theirs is a zero token in its place; LNAMD drops it either way),
    and the last block's normalised class token, not L2-normalised (their ``dino_model(image)``)."""

    def __init__(self, cfg: MuScConfig, vit: nn.Module | None = None) -> None:
        super().__init__()
        from lightning_modules.dino.encoder import DinoEncoder

        self.encoder = DinoEncoder(cfg.dino, vit)
        depth = self.encoder.depth
        self.blocks = dino_blocks(cfg.backbone_family, list(cfg.feature_layers), depth)
        _check_layers(self.blocks, depth, cfg.dino.name)
        _check_layers(list(cfg.feature_layers), depth, cfg.dino.name)
        if cfg.dino.image_size % self.encoder.patch_size:
            raise ConfigError(
                f"musc dino.image_size {cfg.dino.image_size} must be a multiple of the patch size "
                f"{self.encoder.patch_size} of {cfg.dino.name}"
            )
        self.grid = self.encoder.grid
        self.image_size = cfg.dino.image_size
        self.width = int(self.encoder.vit.embed_dim)
        self.embedding_dim = self.width

    def train(self, mode: bool = True) -> DinoFeatures:
        """The frozen ViT stays in eval mode whatever Lightning asks."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.encoder.layer_tokens(images, self.blocks)
