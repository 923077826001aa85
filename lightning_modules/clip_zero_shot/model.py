"""CLIP and CLIP-AC as plain torch: an unmodified frozen CLIP scored against per-category prompts.

Image score: anomaly softmax of the image embedding (``ln_post(cls) @ proj``); map: the same softmax
per patch of the last block's tokens through ``ln_post @ proj``, upsampled bilinearly. CoOp reuses this
scoring with learned texts (:class:`~lightning_modules.coop.model.CoOp`).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.clip_zero_shot.config import CLIPConfig
from lightning_modules.ops import anomaly_probability, class_probability_maps, gaussian_blur, l2_normalize


class CLIPZeroShot(FrozenCLIP):
    def __init__(self, cfg: CLIPConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(
            cfg.backbone,
            clip_model,
            tokenizer,
            prompt_ensemble=getattr(cfg, "prompt_ensemble", None),
            normalize_each_prompt=getattr(cfg, "normalize_each_prompt", True),
        )
        self.cfg = cfg

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(image embeddings [B, D], patch embeddings [B, N, D], grid)``, L2-normalised, no gradients."""
        last = self.vision.depth
        with torch.no_grad():
            features = self.vision(images, layers=[last])
            patches = l2_normalize(self.vision.project(features.tokens[last][:, 1:]).float())
            return self.image_embedding(features.class_token), patches, features.grid

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], anomaly maps [B, H, W])`` for images of the given categories."""
        image, patches, grid = self.encode_images(images)
        text = self.class_text_for(category_ids)
        scores = anomaly_probability(image, text, self.cfg.temperature)
        maps = class_probability_maps(patches, text, grid, size, self.cfg.temperature)[:, 1]
        return scores, gaussian_blur(maps, self.cfg.gaussian_sigma)
