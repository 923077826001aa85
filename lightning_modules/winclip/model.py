"""WinCLIP (Jeong et al., CVPR 2023), zero-shot, as plain torch on a frozen CLIP.

- image score: anomaly softmax of the class embedding of the whole image;
- for each window size (2x2 and 3x3 patches, stride 1) every window runs through the ViT with only its
  tokens (plus the class token, with their position embeddings); window score = anomaly softmax of the
  window's class embedding; patch score = harmonic mean of the windows covering the patch;
- map = harmonic mean of the scales' patch scores and the image score, bilinearly upsampled.

All windows of all images of a batch run as one batch of short sequences (the reference loops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.clip.windows import encode_windows, harmonic_window_aggregation, window_token_indices
from lightning_modules.ops import anomaly_probability, gaussian_blur
from lightning_modules.winclip.config import WinCLIPConfig


class WinCLIP(FrozenCLIP):
    def __init__(self, cfg: WinCLIPConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(
            cfg.backbone,
            clip_model,
            tokenizer,
            prompt_ensemble=cfg.prompt_ensemble,
            normalize_each_prompt=cfg.normalize_each_prompt,
        )
        self.cfg = cfg
        grid = (self.vision.grid, self.vision.grid)
        if not cfg.window_sizes:
            raise ValueError("window_sizes must name at least one window size")
        for i, size in enumerate(cfg.window_sizes):
            self.register_buffer(
                f"windows_{i}", window_token_indices(grid, size, cfg.window_stride), persistent=False
            )

    @property
    def windows(self) -> list[torch.Tensor]:
        return [getattr(self, f"windows_{i}") for i in range(len(self.cfg.window_sizes))]

    @torch.no_grad()
    def window_scores(self, images: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
        """Per window size, the anomaly probability ``[B, W]`` of every window."""
        scores = []
        for windows in self.windows:
            tokens = encode_windows(self.vision, images, windows, self.cfg.window_chunk_size)
            scores.append(anomaly_probability(self.image_embedding(tokens), text, self.cfg.temperature))
        return scores

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], anomaly maps [B, H, W])``."""
        text = self.class_text_for(category_ids)
        image_scores = anomaly_probability(
            self.image_embedding(self.vision(images).class_token), text, self.cfg.temperature
        )
        n = self.vision.grid * self.vision.grid
        patch_scores = [
            harmonic_window_aggregation(scores, windows, n)
            for scores, windows in zip(self.window_scores(images, text), self.windows, strict=True)
        ]
        inverse = sum(1.0 / s for s in patch_scores) + 1.0 / image_scores[:, None]
        maps = (len(patch_scores) + 1) / inverse
        maps = maps.view(-1, 1, self.vision.grid, self.vision.grid)
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
        return image_scores, gaussian_blur(maps, self.cfg.gaussian_sigma)
