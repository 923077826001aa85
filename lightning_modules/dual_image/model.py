"""Dual-Image Enhanced CLIP (Zhang et al., arXiv 2405.04782) as a plain torch model, on AnoVL's pieces.

Joint vision-language score: the text map of AnoVL (with its TTA, optionally sharpened by image-space
synthetic anomalies) plus a visual map from other test images of the same category,
``S = S_text + lambda * S_visual`` on the token grid, then upsampled. Image score:
``(1 - w) * p_text + w * max(S)``. The reference features of a category (the "bank") are computed by the
caller (:class:`~lightning_modules.dual_image.module.DualImageModule`), which also picks the partners.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.anovl.model import REFERENCE_STREAMS, AnoVL, TextBranchOutput
from lightning_modules.anovl.tta import SyntheticAnomalies
from lightning_modules.dual_image.config import AGGREGATES, PAIRINGS, TEXTURES, DualImageConfig
from lightning_modules.dual_image.reference import reference_distances
from lightning_modules.dual_image.synthesis import synthesize_anomalies

SYNTHESIS_SALT = 0x5EED  # image-space synthesis draws from its own per-image generator


def check_config(cfg: DualImageConfig, depth: int) -> None:
    """Wrong settings fail when the model is built, with the key's name, not in the middle of a test epoch."""
    visual, tta = cfg.visual, cfg.tta
    problems = []
    if not visual.layers or any(not 1 <= layer <= depth for layer in visual.layers):
        problems.append(f"visual.layers must be non-empty and lie in 1..{depth}, got {visual.layers}")
    choices = (
        ("visual.stream", visual.stream, REFERENCE_STREAMS),
        ("visual.pairing", visual.pairing, PAIRINGS),
    )
    choices += (("visual.aggregate", visual.aggregate, AGGREGATES), ("tta.texture", tta.texture, TEXTURES))
    choices += (("visual.bank_dtype", visual.bank_dtype, ("float32", "float16", "bfloat16")),)
    problems += [
        f"{key} must be one of {list(allowed)}, got {value!r}"
        for key, value, allowed in choices
        if value not in allowed
    ]
    if visual.k == 0 or visual.k < -1:
        problems.append(f"visual.k must be >= 1 or -1 (every other image), got {visual.k}")
    if not 0 < visual.interval_fraction <= 1:
        problems.append(f"visual.interval_fraction must lie in (0, 1], got {visual.interval_fraction}")
    if not 0 <= cfg.image_score_map_weight <= 1:
        problems.append(f"image_score_map_weight must lie in [0, 1], got {cfg.image_score_map_weight}")
    if not 0 <= tta.perlin_min_scale < tta.perlin_max_scale or tta.image_anomaly_copies < 1:
        problems.append("tta needs 0 <= perlin_min_scale < perlin_max_scale and image_anomaly_copies >= 1")
    if problems:
        raise ConfigError("method." + "; method.".join(problems))


class DualImageCLIP(AnoVL):
    cfg: DualImageConfig

    def __init__(self, cfg: DualImageConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(cfg, clip_model, tokenizer)
        check_config(cfg, self.vision.depth)

    @torch.no_grad()
    def encode_reference(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``(class embeddings [B, D], layer -> tokens [B, N, C])`` for pairing and patch matching."""
        visual = self.cfg.visual
        features = self.encode(images, visual.layers, visual.stream)
        return features.class_embedding, features.reference_tokens

    def reference_grid(
        self,
        queries: Mapping[int, torch.Tensor],
        bank: Mapping[int, torch.Tensor],
        partners: torch.Tensor,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """Visual anomaly map ``[B, h, w]`` of the queries against their partners in ``bank``."""
        visual = self.cfg.visual
        distances = reference_distances(
            queries, bank, partners, visual.aggregate, visual.interval_fraction, visual.partner_chunk
        )
        return distances.reshape(-1, *grid)

    @torch.no_grad()
    def synthetic_anomalies(self, images: torch.Tensor, seeds: Sequence[int]) -> SyntheticAnomalies | None:
        """Tokens of Perlin-masked foreign-texture images and the masked fraction of each patch."""
        tta = self.cfg.tta
        if not tta.image_anomalies:
            return None
        generators = [torch.Generator().manual_seed((int(s) + SYNTHESIS_SALT) % (2**63 - 1)) for s in seeds]
        copies = [
            synthesize_anomalies(
                images,
                generators,
                tta.texture,
                tta.perlin_min_scale,
                tta.perlin_max_scale,
                tta.perlin_threshold,
                tta.max_opacity,
            )
            for _ in range(tta.image_anomaly_copies)
        ]
        synthetic = torch.stack([c[0] for c in copies], dim=1)  # [B, S, 3, H, W]
        masks = torch.stack([c[1] for c in copies], dim=1)  # [B, S, H, W]
        b, s = masks.shape[:2]
        tokens = self.encode(synthetic.flatten(0, 1)).patch_tokens
        targets = F.avg_pool2d(
            masks.flatten(0, 1)[:, None].float(), self.patch_size
        )  # covered fraction per patch
        return SyntheticAnomalies(
            tokens.view(b, s, *tokens.shape[1:]), targets.view(b, s, -1), tta.image_anomaly_weight
        )

    def scores_and_maps(
        self, out: TextBranchOutput, size: tuple[int, int], reference_grid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``S = S_text + lambda * S_visual`` on the token grid (``reference_grid [B, h, w]`` from
        :meth:`reference_grid`); image score ``(1 - w) * p_text + w * max(S)``."""
        grid = out.grid
        if reference_grid is not None:
            grid = grid + self.cfg.visual.weight * reference_grid.to(grid)
        w = self.cfg.image_score_map_weight
        scores = (1.0 - w) * out.image_scores + w * grid.flatten(1).amax(dim=1)
        return scores, self.upsample(grid, size)
