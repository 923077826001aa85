"""WinCLIP (Jeong et al., CVPR 2023), zero-shot, and WinCLIP+ (few-shot), as plain torch on a frozen CLIP.

Zero-shot:

- image score: anomaly softmax of the class embedding of the whole image;
- for each window size (2x2 and 3x3 patches, stride 1) every window runs through the ViT with only its
  tokens (plus the class token, with their position embeddings); window score = anomaly softmax of the
  window's class embedding; patch score = harmonic mean of the windows covering the patch;
- map = harmonic mean of the scales' patch scores and the image score, bilinearly upsampled.

WinCLIP+ (K normal reference images of the category, :meth:`WinCLIP.set_references`), as anomalib's
``WinClipModel`` with reference images: a memory of the references' patch embeddings (last block,
``ln_post``, not projected) and of their window embeddings per scale; each test patch and window scores
``min (1 - cos) / 2`` against the memory of its scale; per scale the window scores are aggregated to
patches harmonically; the few-shot map is the mean of the patch scale and the window scales; the map is
``(zero-shot + few-shot) / 2`` and the image score ``(zero-shot image score + max few-shot map) / 2``.

All windows of all images of a batch run as one batch of short sequences (the reference loops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.clip.windows import encode_windows, harmonic_window_aggregation, window_token_indices
from lightning_modules.ops import anomaly_probability, gaussian_blur, l2_normalize
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
        # WinCLIP+: category id -> (patch memory [K*N, width], per scale the window memory [K*W, D]), all
        # L2-normalised; empty: zero-shot
        self.memory: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    @property
    def windows(self) -> list[torch.Tensor]:
        return [getattr(self, f"windows_{i}") for i in range(len(self.cfg.window_sizes))]

    @torch.no_grad()
    def window_embeddings(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per window size, the L2-normalised image embedding ``[B, W, D]`` of every window."""
        return [
            self.image_embedding(encode_windows(self.vision, images, windows, self.cfg.window_chunk_size))
            for windows in self.windows
        ]

    @torch.no_grad()
    def window_scores(self, images: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
        """Per window size, the anomaly probability ``[B, W]`` of every window."""
        return [anomaly_probability(e, text, self.cfg.temperature) for e in self.window_embeddings(images)]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image embeddings [B, D], patch embeddings [B, N, width])``: CLIP's image embedding and the
        last block's patch tokens after ``ln_post`` (anomalib's ``encode_image`` tokens), L2-normalised."""
        features = self.vision(images, layers=[self.vision.depth])
        patches = self.vision.visual.ln_post(features.tokens[self.vision.depth][:, 1:])
        return self.image_embedding(features.class_token), l2_normalize(patches.float())

    # --- WinCLIP+ ---------------------------------------------------------------------------------
    @torch.no_grad()
    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        """The memory of category ``category_id`` from its K normal reference images ``[K, 3, S, S]``."""
        _, patches = self.encode(images)
        windows = [e.reshape(-1, e.shape[-1]) for e in self.window_embeddings(images)]
        self.memory[int(category_id)] = (patches.reshape(-1, patches.shape[-1]), windows)

    def clear_references(self) -> None:
        self.memory = {}

    def few_shot_scores(
        self, category_ids: torch.Tensor, patches: torch.Tensor, windows: list[torch.Tensor]
    ) -> torch.Tensor:
        """The few-shot map ``[B, N]``: per scale ``min (1 - cos) / 2`` against the category's memory
        (windows aggregated to patches harmonically), averaged over the patch scale and the window scales."""
        out = patches.new_empty(patches.shape[:2])
        n = patches.shape[1]
        for category in torch.unique(category_ids).tolist():
            rows = (category_ids == category).nonzero().flatten().to(patches.device)
            patch_memory, window_memory = self.memory[category]
            scales = [visual_association(patches[rows], patch_memory)]
            for embeddings, memory, index in zip(windows, window_memory, self.windows, strict=True):
                scores = visual_association(embeddings[rows], memory)
                scales.append(harmonic_window_aggregation(scores, index, n))
            out[rows] = torch.stack(scales).mean(dim=0)
        return out

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], anomaly maps [B, H, W])``; WinCLIP+ where the category has references."""
        text = self.class_text_for(category_ids)
        image_embeddings, patches = self.encode(images)
        image_scores = anomaly_probability(image_embeddings, text, self.cfg.temperature)
        windows = self.window_embeddings(images)
        n = self.vision.grid * self.vision.grid
        patch_scores = [
            harmonic_window_aggregation(anomaly_probability(e, text, self.cfg.temperature), index, n)
            for e, index in zip(windows, self.windows, strict=True)
        ]
        inverse = sum(1.0 / s for s in patch_scores) + 1.0 / image_scores[:, None]
        maps = (len(patch_scores) + 1) / inverse
        if self.memory:
            few_shot = self.few_shot_scores(category_ids, patches, windows)
            maps = (maps + few_shot) / 2
            image_scores = (image_scores + few_shot.amax(dim=1)) / 2
        maps = maps.view(-1, 1, self.vision.grid, self.vision.grid)
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
        return image_scores, gaussian_blur(maps, self.cfg.gaussian_sigma)


def visual_association(embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``[B, M]``: each of the ``M`` embeddings' ``min (1 - cos) / 2`` over the memory's rows (WinCLIP's
    Eq. 4 as anomalib computes it); both sides L2-normalised."""
    similarity = l2_normalize(embeddings.float()) @ l2_normalize(memory.float()).T
    return (1 - similarity).amin(dim=-1) / 2
