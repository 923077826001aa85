"""VAND / APRIL-GAN (Chen et al., CVPR 2023 VAND workshop) as plain torch on a frozen CLIP.

Trainable: one ``Linear(width -> embed_dim)`` per chosen block, applied to that block's *raw* patch
tokens (no ``ln_post``/``proj``). Per layer, ``100 * cos`` against the category's ensemble texts is
upsampled (bilinear, align_corners=True), then softmaxed per pixel; the map is the sum over layers of
the anomaly channel. Image score: anomaly softmax of CLIP's image embedding. Loss: per layer
``focal(probabilities, gt) + dice(anomaly channel, gt)``; masks only, no image loss.

As the authors' code runs it (docs/methods.md#vand): exact GELU in both towers at any size other than the
architecture's native one (``activation``), and text encoding, encoder, heads and maps under fp16 autocast
on CUDA (``fp16_autocast``; the loss outside it).

Few-shot (the authors' ``test.py --mode few_shot``, :meth:`VAND.set_references`): a memory bank of the raw
patch tokens of ``few_shot_layers`` of the K reference images (encoded without autocast, as their
``few_shot.memory``); per layer each test patch's ``min (1 - cos)`` over the bank, upsampled (bilinear,
``align_corners=True``), summed over layers and added to the zero-shot map. The image score is then
``(zero-shot probability + min-max normalised map maximum) / 2``, the normalisation over the category's
test images (:data:`FEW_SHOT_SCORE`, applied by the evaluator).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from datamodules.errors import ConfigError, require_choices
from lightning_modules.clip.factory import authors_activation, clip_with_activation
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.clip.prompts import PROMPT_WORDS
from lightning_modules.losses import dice_loss, focal_loss
from lightning_modules.metrics.category_scores import CategoryScoreRule
from lightning_modules.mosaic import MOSAIC_STYLES
from lightning_modules.ops import (
    anomaly_probability,
    class_probability_maps,
    gaussian_blur,
    l2_normalize,
    normalized_as_stored,
)
from lightning_modules.vand.config import VAND_ACTIVATIONS, VANDConfig

ABNORMAL = 1


@dataclasses.dataclass
class VANDOutput:
    image_scores: torch.Tensor  # [B]
    pixel_probs: list[torch.Tensor]  # per layer [B, 2, H, W] (normal, anomalous)

    def anomaly_map(self) -> torch.Tensor:
        return sum(p[:, ABNORMAL] for p in self.pixel_probs)


def resolve_activation(cfg: VANDConfig, clip_model: nn.Module) -> str:
    """The MLP activation the authors' code would run: GELU unless the input size is the native one."""
    return authors_activation(cfg.activation, cfg.backbone.image_size, clip_model)


def check_choices(cfg: VANDConfig) -> None:
    require_choices(
        ("activation", cfg.activation, VAND_ACTIVATIONS),
        ("prompt_words", cfg.prompt_words, PROMPT_WORDS),
        ("mosaic_style", cfg.mosaic_style, MOSAIC_STYLES),
    )


class VAND(FrozenCLIP):
    def __init__(self, cfg: VANDConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        check_choices(cfg)
        clip_model, tokenizer, activation = clip_with_activation(
            cfg.backbone, clip_model, tokenizer, lambda model: resolve_activation(cfg, model)
        )
        super().__init__(
            cfg.backbone,
            clip_model,
            tokenizer,
            prompt_ensemble=cfg.prompt_ensemble,
            normalize_each_prompt=cfg.normalize_each_prompt,
        )
        self.cfg = cfg
        self.activation = activation
        few_shot = cfg.feature_layers if cfg.few_shot_layers is None else cfg.few_shot_layers
        self.few_shot_layers = list(few_shot)
        for key, layers in (
            ("feature_layers", cfg.feature_layers),
            ("few_shot_layers", self.few_shot_layers),
        ):
            if not layers or any(not 1 <= layer <= self.vision.depth for layer in layers):
                raise ConfigError(f"{key} must be non-empty and lie in 1..{self.vision.depth}, got {layers}")
        self.heads = nn.ModuleList(
            nn.Linear(self.vision.width, self.vision.output_dim) for _ in cfg.feature_layers
        )
        # few-shot: category id -> per few_shot_layers entry the bank [K*N, width]; empty: zero-shot
        self.memory: dict[int, list[torch.Tensor]] = {}

    def autocast(self) -> contextlib.AbstractContextManager:
        """fp16 autocast where the authors' ``torch.cuda.amp.autocast()`` is active: on CUDA only."""
        on_cuda = self.vision.pos_embed.device.type == "cuda"
        if self.cfg.fp16_autocast and on_cuda:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def set_classes(self, words: Sequence[str]) -> None:
        with self.autocast():
            super().set_classes(words)

    @torch.no_grad()
    def encode_images(
        self, images: torch.Tensor, extra_layers: Sequence[int] = ()
    ) -> dict[str, torch.Tensor]:
        """Frozen features (cacheable): ``image_embedding`` [B, D] and raw patch tokens ``tokens_{layer}``
        [B, N, width] of each feature layer (and of ``extra_layers``: the few-shot memory's)."""
        with self.autocast():
            return self._encode_images(images, extra_layers)

    def _encode_images(
        self, images: torch.Tensor, extra_layers: Sequence[int] = ()
    ) -> dict[str, torch.Tensor]:
        layers = sorted({*self.cfg.feature_layers, *extra_layers})
        features = self.vision(images, layers=layers)
        return {"image_embedding": normalized_as_stored(self.vision.project(features.class_token))} | {
            f"tokens_{layer}": features.tokens[layer][:, 1:] for layer in layers
        }

    # --- few-shot ---------------------------------------------------------------------------------
    @torch.no_grad()
    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        """The memory bank of category ``category_id`` from its K reference images ``[K, 3, S, S]``: raw
        patch tokens of ``few_shot_layers``, without autocast (the authors' ``memory()`` runs outside it)."""
        features = self._encode_images(images, self.few_shot_layers)
        self.memory[int(category_id)] = [
            features[f"tokens_{layer}"].reshape(-1, self.vision.width).float()
            for layer in self.few_shot_layers
        ]

    def clear_references(self) -> None:
        self.memory = {}

    def few_shot_map(
        self, features: dict[str, torch.Tensor], category_ids: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """``[B, H, W]``: per few-shot layer each patch's ``min (1 - cos)`` over the category's bank,
        upsampled (bilinear, ``align_corners=True``), summed over the layers (float32)."""
        b, grid = category_ids.shape[0], (self.vision.grid, self.vision.grid)
        out = torch.zeros(b, *size, device=category_ids.device)
        for category in torch.unique(category_ids).tolist():
            rows = (category_ids == category).nonzero().flatten()
            for layer, bank in zip(self.few_shot_layers, self.memory[category], strict=True):
                tokens = features[f"tokens_{layer}"][rows.to(bank.device)].float()
                distance = 1.0 - l2_normalize(tokens) @ l2_normalize(bank).T  # [b, N, K*N]
                grid_map = distance.amin(dim=-1).view(-1, 1, *grid)
                upsampled = nn.functional.interpolate(
                    grid_map, size=size, mode="bilinear", align_corners=True
                )
                out[rows.to(out.device)] += upsampled[:, 0].to(out.device)
        return out

    def forward(self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int]) -> VANDOutput:
        return self.scores(self.encode_images(images), category_ids, size)

    def scores(
        self, features: dict[str, torch.Tensor], category_ids: torch.Tensor, size: tuple[int, int]
    ) -> VANDOutput:
        """The trainable part on (fresh or cached) :meth:`encode_images` features."""
        with self.autocast():
            return self._scores(features, category_ids, size)

    def _scores(
        self, features: dict[str, torch.Tensor], category_ids: torch.Tensor, size: tuple[int, int]
    ) -> VANDOutput:
        grid = (self.vision.grid, self.vision.grid)
        # The authors' order, which matters under fp16: (100 * embedding) @ text, i.e. scaled before the product.
        scale = 1.0 / self.cfg.temperature
        with torch.no_grad():
            text = self.class_text_for(category_ids)
            image_scores = anomaly_probability(scale * features["image_embedding"], text, 1.0)
        pixel_probs = []
        for layer, head in zip(self.cfg.feature_layers, self.heads, strict=True):
            patches = normalized_as_stored(head(features[f"tokens_{layer}"].float()))
            pixel_probs.append(
                class_probability_maps(
                    scale * patches, text, grid, size, 1.0, upsample_logits=True, align_corners=True
                )
            )
        return VANDOutput(image_scores, pixel_probs)

    def loss(self, output: VANDOutput, masks: torch.Tensor) -> torch.Tensor:
        """``sum_layers focal(p, gt; gamma) + dice(p_anomalous, gt)`` (the authors' FocalLoss / BinaryDiceLoss)."""
        gt = (masks > 0.5).float()
        total = masks.new_zeros((), dtype=torch.float32)
        for probs in output.pixel_probs:
            total = (
                total + focal_loss(probs, gt, gamma=self.cfg.focal_gamma) + dice_loss(probs[:, ABNORMAL], gt)
            )
        return total

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], maps [B, H, W])``; with a memory (few-shot) the scores are the parts
        ``[B, 2]`` (zero-shot probability, map maximum) that :data:`FEW_SHOT_SCORE` combines per category."""
        if not self.memory:
            output = self(images, category_ids, size)
            return output.image_scores, gaussian_blur(output.anomaly_map(), self.cfg.gaussian_sigma)
        features = self.encode_images(images, self.few_shot_layers)
        output = self.scores(features, category_ids, size)
        maps = output.anomaly_map().float() + self.few_shot_map(features, category_ids, size)
        maps = gaussian_blur(maps, self.cfg.gaussian_sigma)
        return torch.stack([output.image_scores.float(), maps.flatten(1).amax(dim=1)], dim=1), maps


def _few_shot_scores(parts: torch.Tensor) -> torch.Tensor:
    """test.py's few-shot image score of one category's test images ``[n, 2]``: ``(p + (m - min m) /
    (max m - min m)) / 2``; where every image has the same map maximum (their code divides 0 by 0 and
    sklearn refuses the NaN) the normalised part is 0."""
    probability, maxima = parts[:, 0], parts[:, 1]
    spread = maxima.max() - maxima.min()
    normalised = (maxima - maxima.min()) / spread if spread > 0 else torch.zeros_like(maxima)
    return 0.5 * (probability + normalised)


#: The few-shot image score: its normalisation spans the category's test images (evaluator-applied).
FEW_SHOT_SCORE = CategoryScoreRule(
    name="vand_few_shot",
    parts=2,
    combine=_few_shot_scores,
    per_image=lambda parts: 0.5 * (parts[:, 0] + parts[:, 1]),
)
