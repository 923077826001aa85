"""CMG as a plain torch model: a vision anomaly detector on frozen CLIP tokens, guided by text.

- Detector [design choice, docs/methods.md#cmg]: a per-token MLP autoencoder reconstructs layer-normalised
  patch tokens of some CLIP blocks (concatenated); the anomaly map is the per-token reconstruction error
  and the image score the mean of the map's top values. Training adds feature jitter (UniAD) so the
  autoencoder cannot learn the identity. One model serves all categories of a dataset (unified).
- CMER (:mod:`cmer`): a per-image keep mask over a region grid from CLIP image-text occlusion relevance.
- CMLE (:mod:`cmle`): locally-linear structure of the images' text embeddings imposed on their latent
  codes (mean of the kept tokens' bottleneck codes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.cmg.cmer import (
    APPLY_TO,
    FILLS,
    RelevanceCache,
    fill_regions,
    keep_regions,
    occlusion_relevance,
    regions_to_grid,
)
from lightning_modules.cmg.cmle import batch_cmle_loss
from lightning_modules.cmg.config import CMGConfig
from lightning_modules.ops import gaussian_blur, l2_normalize

SCOPES = ("batch", "global")


class TokenAutoencoder(nn.Module):
    """``C -> hidden -> latent -> hidden -> C``, applied to every token independently."""

    def __init__(self, in_dim: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, in_dim)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encoder(x)
        return self.decoder(codes), codes


@dataclasses.dataclass
class DetectorOutput:
    errors: torch.Tensor  # [B, N] per-token reconstruction error
    codes: torch.Tensor  # [B, N, latent] per-token bottleneck codes
    token_keep: torch.Tensor  # [B, N] bool: tokens CMER keeps (all True without CMER)
    grid: tuple[int, int]

    def image_codes(self, normalize: bool = True) -> torch.Tensor:
        """``[B, latent]``: mean code of the kept tokens (the image's point in the latent space, for CMLE)."""
        weights = self.token_keep.to(self.codes.dtype)[..., None]
        codes = (self.codes * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return l2_normalize(codes) if normalize else codes

    def reconstruction_loss(self) -> torch.Tensor:
        """Mean error over the kept tokens: discarded regions do not train the detector."""
        keep = self.token_keep.to(self.errors.dtype)
        return (self.errors * keep).sum() / keep.sum().clamp_min(1.0)


class CMG(FrozenCLIP):
    """The frozen CLIP (plain, no V-V path) plus the detector; only the autoencoder trains."""

    def __init__(self, cfg: CMGConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(cfg.backbone, clip_model, tokenizer)
        self.cfg = cfg
        self._check()
        in_dim = self.vision.width * len(cfg.detector.feature_layers)
        self.autoencoder = TokenAutoencoder(in_dim, cfg.detector.hidden_dim, cfg.detector.latent_dim)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.relevance_cache = RelevanceCache(self.relevance_settings())

    def _check(self) -> None:
        layers = self.cfg.detector.feature_layers
        if not layers or not all(1 <= layer <= self.vision.depth for layer in layers):
            raise ConfigError(
                f"detector.feature_layers must be non-empty and lie in 1..{self.vision.depth}, got {layers}"
            )
        cmer, cmle = self.cfg.cmer, self.cfg.cmle
        if cmer.fill not in FILLS or cmer.apply_to not in APPLY_TO or cmer.grid < 1:
            raise ConfigError(f"cmer: fill in {FILLS}, apply_to in {APPLY_TO}, grid >= 1; got {cmer}")
        if cmle.scope not in SCOPES or cmle.k < 1:
            raise ConfigError(f"cmle: scope in {SCOPES} and k >= 1; got {cmle}")

    def relevance_settings(self) -> dict[str, object]:
        """What CMER relevance depends on besides the image and its text (the cache key)."""
        b = self.cfg.backbone
        patch_weights = self.vision.visual.conv1.weight.detach().float().cpu().numpy().tobytes()
        return {
            "backbone": b.name,
            "pretrained": b.pretrained,
            "weights": hashlib.sha1(patch_weights).hexdigest()[:16],  # random weights differ per seed
            "image_size": b.image_size,
            "pos_embed_interpolation": b.pos_embed_interpolation,
            "grid": self.cfg.cmer.grid,
            "fill": self.cfg.cmer.fill,
        }

    def use_relevance_cache_dir(self, folder: str | Path | None) -> None:
        """Keep CMER relevance on disk in ``folder`` (entries already computed in memory are kept)."""
        current = self.relevance_cache.path.parent if self.relevance_cache.path is not None else None
        if (Path(folder) if folder else None) == current:
            return
        cache = RelevanceCache(self.relevance_settings(), folder)
        cache.entries = {**cache.entries, **self.relevance_cache.entries}
        cache.dirty = bool(self.relevance_cache.entries)
        self.relevance_cache = cache

    # --- frozen CLIP ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``[n, D]`` L2-normalised CLIP text embeddings; each distinct text is encoded once per run."""
        device = self.vision.pos_embed.device
        missing = sorted(set(texts) - set(self._text_cache))
        if missing:
            if self.tokenizer is None:
                raise ConfigError("CMG needs the CLIP tokenizer to encode texts")
            features = l2_normalize(self.text.encode(self.tokenizer(missing).to(device)).float())
            self._text_cache.update(zip(missing, features.cpu(), strict=True))
        return torch.stack([self._text_cache[t] for t in texts]).to(device)

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (as ``encode_image``): CMER's matching score."""
        return self.image_embedding(self.vision(images).class_token)

    @torch.no_grad()
    def token_features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, N, C]``: patch tokens of the feature layers, each layer-normalised, concatenated."""
        features = self.vision(images, layers=self.cfg.detector.feature_layers)
        tokens = [
            F.layer_norm(features.tokens[layer][:, 1:].float(), (self.vision.width,))
            for layer in self.cfg.detector.feature_layers
        ]
        return torch.cat(tokens, dim=-1), features.grid

    # --- CMER -------------------------------------------------------------------------------------
    @torch.no_grad()
    def relevance(
        self, images: torch.Tensor, image_paths: Sequence[str], texts: Sequence[str]
    ) -> torch.Tensor:
        """``[B, grid^2]`` occlusion relevance, from the cache or computed for the missing images at once."""
        keys = [RelevanceCache.key(p, t) for p, t in zip(image_paths, texts, strict=True)]
        cached = self.relevance_cache.get(keys)
        todo = [i for i, value in enumerate(cached) if value is None]
        if todo:
            fresh = occlusion_relevance(
                images[todo],
                self.encode_texts([texts[i] for i in todo]),
                self.image_embeddings,
                grid=self.cfg.cmer.grid,
                fill=self.cfg.cmer.fill,
                chunk_size=self.cfg.cmer.chunk_size,
            )
            self.relevance_cache.put([keys[i] for i in todo], fresh)
            for i, value in zip(todo, fresh.cpu(), strict=True):
                cached[i] = value
        return torch.stack(cached).to(images.device)

    def keep_mask(
        self, images: torch.Tensor, image_paths: Sequence[str], texts: Sequence[str]
    ) -> torch.Tensor | None:
        """``[B, grid^2]`` regions CMER keeps, or None when CMER is off."""
        if not self.cfg.cmer.enabled:
            return None
        relevance = self.relevance(images, image_paths, texts)
        return keep_regions(relevance, self.cfg.cmer.keep_ratio, self.cfg.cmer.threshold)

    # --- detector ---------------------------------------------------------------------------------
    def forward(
        self, images: torch.Tensor, keep: torch.Tensor | None = None, jitter: bool = False
    ) -> DetectorOutput:
        """Reconstruct the tokens; with ``keep`` (CMER) discarded regions are blanked in the input
        (``apply_to: pixels``) and, in both modes, left out of the loss, the codes and the map."""
        if keep is not None and self.cfg.cmer.apply_to == "pixels":
            images = fill_regions(images, ~keep, self.cfg.cmer.grid, self.cfg.cmer.fill)
        features, grid = self.token_features(images)
        inputs = features
        if jitter and self.cfg.detector.jitter_scale > 0:
            rms = features.norm(dim=-1, keepdim=True) / math.sqrt(features.shape[-1])
            inputs = features + torch.randn_like(features) * rms * self.cfg.detector.jitter_scale
        reconstruction, codes = self.autoencoder(inputs)
        errors = (reconstruction - features).pow(2).mean(dim=-1)
        if keep is None:
            token_keep = torch.ones_like(errors, dtype=torch.bool)
        else:
            token_keep = regions_to_grid(keep, self.cfg.cmer.grid, grid).flatten(1)
        return DetectorOutput(errors, codes, token_keep, grid)

    def loss(
        self, output: DetectorOutput, text_embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``L_detector + lambda * L_CMLE`` with the per-batch matrix (the global one lives in the module)."""
        detector = output.reconstruction_loss()
        cmle = detector.new_zeros(())
        if self.cfg.cmle.enabled and self.cfg.cmle.scope == "batch" and text_embeddings is not None:
            codes = output.image_codes(self.cfg.cmle.normalize_latent)
            cmle = batch_cmle_loss(codes, text_embeddings, self.cfg.cmle.k, self.cfg.cmle.reg)
        return {"loss": detector + self.cfg.cmle.weight * cmle, "detector_loss": detector, "cmle_loss": cmle}

    def anomaly_maps(
        self, output: DetectorOutput, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], maps [B, H, W])``: token errors (zero where CMER discards), bilinearly
        upsampled, Gaussian-smoothed; score = mean of the top ``topk_ratio`` map values."""
        maps = (output.errors * output.token_keep).reshape(-1, 1, *output.grid)
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
        maps = gaussian_blur(maps, self.cfg.detector.gaussian_sigma)
        k = max(1, int(self.cfg.detector.topk_ratio * maps[0].numel()))
        scores = maps.flatten(1).topk(k, dim=1).values.mean(dim=1)
        return scores, maps

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        size: tuple[int, int],
        image_paths: Sequence[str] = (),
        texts: Sequence[str] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched inference; CMER (when applied at test) needs each image's path (cache key) and text."""
        keep = self.keep_mask(images, image_paths, texts) if self.cfg.cmer.apply_at_test else None
        return self.anomaly_maps(self(images, keep), size)
