"""AnomalyCLIP as a plain torch model: object-agnostic prompts on a frozen CLIP.

:class:`AnomalyCLIPBase` is the part of AnomalyCLIP's code that FAPrompt's code reuses (the frozen CLIP with
DPAM, deep text tokens, the loss terms); :class:`AnomalyCLIP` adds its object-agnostic prompts and scoring.

Only :class:`ObjectAgnosticPrompts` trains (about 43k numbers for ViT-L-14); the CLIP weights are frozen.
Image features do not depend on the prompts, so :meth:`AnomalyCLIP.encode_images` runs without gradients
and :meth:`AnomalyCLIP.scores` turns (cached or fresh) image features into logits and maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.anomalyclip.config import AnomalyCLIPBaseConfig, AnomalyCLIPConfig
from lightning_modules.clip import (
    DualPathVisionEncoder,
    LearnedContextPrompts,
    PromptTextEncoder,
    create_clip,
)
from lightning_modules.losses import dice_loss, focal_loss
from lightning_modules.ops import gaussian_blur, l2_normalize, patch_class_probabilities

NORMAL, ABNORMAL = 0, 1


class ObjectAgnosticPrompts(LearnedContextPrompts):
    """``[V1..Vn] object .`` / ``[W1..Wn] damaged object .`` plus deep text tokens.

    The learnable vectors replace the embeddings of ``n`` placeholder words right after the start token;
    the rest of each prompt (words, end token, padding) stays CLIP's own token embeddings.
    """

    def __init__(
        self,
        text_encoder: PromptTextEncoder,
        tokenizer,
        prompt_length: int,
        deep_prompt_length: int,
        num_deep_blocks: int,
    ) -> None:
        super().__init__(text_encoder, tokenizer, prompt_length, ("{} object.", "{} damaged object."))
        self.deep_tokens = nn.ParameterList(
            nn.Parameter(torch.empty(deep_prompt_length, text_encoder.width).normal_(std=0.02))
            for _ in range(num_deep_blocks)
        )


@dataclasses.dataclass
class ImageFeatures:
    """What the frozen image encoder produces for AnomalyCLIP (cacheable: independent of the prompts)."""

    image_embedding: torch.Tensor  # [B, D] L2-normalised class embedding
    patch_embeddings: dict[int, torch.Tensor]  # layer -> [B, N, D] L2-normalised V-V patch embeddings
    grid: tuple[int, int]


@dataclasses.dataclass
class AnomalyCLIPOutput:
    image_logits: torch.Tensor  # [B, 2] cosine / temperature (normal, abnormal)
    pixel_probs: dict[int, torch.Tensor]  # layer -> [B, 2, H, W] upsampled class probabilities

    @property
    def image_scores(self) -> torch.Tensor:
        return self.image_logits.softmax(dim=-1)[:, ABNORMAL]

    def anomaly_map(self) -> torch.Tensor:
        """``sum_layers (S_a + 1 - S_n) / 2`` as in the authors' test code: ``[B, H, W]``."""
        return sum((p[:, ABNORMAL] + 1.0 - p[:, NORMAL]) / 2.0 for p in self.pixel_probs.values())


class AnomalyCLIPBase(nn.Module):
    """The frozen CLIP of AnomalyCLIP's code and what the methods built on that code share (AnomalyCLIP,
    FAPrompt): DPAM image features, learned prompts through the text tower with float16-rounded deep tokens,
    the segmentation loss terms and the inference-text cache. A subclass owns ``self.prompts``, the only
    trainable module, and scores images with it."""

    prompts: nn.Module

    def __init__(
        self, cfg: AnomalyCLIPBaseConfig, clip_model: nn.Module | None = None, tokenizer=None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if clip_model is None:
            clip_model, tokenizer = create_clip(
                cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.cache_dir
            )
        clip_model.eval().requires_grad_(False)
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.vision = DualPathVisionEncoder(
            clip_model.visual,
            image_size=cfg.backbone.image_size,
            dpam_blocks=range(cfg.dpam_start_block, len(clip_model.visual.transformer.resblocks) + 1),
            pos_embed_interpolation=cfg.backbone.pos_embed_interpolation,
        )
        self.text = PromptTextEncoder(clip_model)
        self._check_layers()

    def _check_layers(self) -> None:
        blocks = self.cfg.deep_prompt_blocks
        if blocks and blocks != list(range(blocks[0], blocks[0] + len(blocks))):
            raise ConfigError(f"deep_prompt_blocks must be consecutive text blocks, got {blocks}")
        if blocks and (blocks[0] < 2 or blocks[-1] > self.text.depth):
            raise ConfigError(
                f"deep_prompt_blocks must lie in 2..{self.text.depth} (block 1 gets none), got {blocks}"
            )
        bad = [layer for layer in self.cfg.map_layers if not 1 <= layer <= self.vision.depth]
        if bad or not self.cfg.map_layers:
            raise ConfigError(
                f"map_layers must be non-empty and lie in 1..{self.vision.depth}, got {self.cfg.map_layers}"
            )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.prompts.parameters())

    def train(self, mode: bool = True) -> AnomalyCLIPBase:
        """The frozen CLIP always stays in eval mode (no dropout), whatever Lightning asks."""
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        features = self.vision(images, layers=self.cfg.map_layers)
        image_embedding = self.vision.project(features.class_token, ln_post=self.cfg.image_embedding_ln_post)
        patches = {
            layer: l2_normalize(self.vision.project(tokens[:, 1:], ln_post=True))
            for layer, tokens in features.tokens.items()
        }
        return ImageFeatures(l2_normalize(image_embedding), patches, features.grid)

    # --- feature cache (lightning_modules/feature_cache.py) -----------------------------------------
    def features_to_tensors(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        """Per-sample tensors of :class:`ImageFeatures` (name -> [B, ...]), as the feature cache stores them."""
        return {"image_embedding": features.image_embedding} | {
            f"patch_{layer}": patches for layer, patches in features.patch_embeddings.items()
        }

    def features_from_tensors(self, tensors: dict[str, torch.Tensor]) -> ImageFeatures:
        """Inverse of :meth:`features_to_tensors` (a batch of cached features)."""
        patches = {layer: tensors[f"patch_{layer}"] for layer in self.cfg.map_layers}
        return ImageFeatures(tensors["image_embedding"], patches, (self.vision.grid, self.vision.grid))

    # --- text ----------------------------------------------------------------------------------------
    def encode_prompts(
        self, prompts: torch.Tensor, token_ids: torch.Tensor, deep_tokens: list[torch.Tensor]
    ) -> torch.Tensor:
        """Text features ``[n, D]`` (float32, not normalised) of ``n`` prompt embeddings ``[n, L, width]``
        with the deep tokens (one ``[k, width]`` per block of ``deep_prompt_blocks``)."""
        if self.cfg.round_deep_prompts_fp16:
            # The authors' order (AnomalyCLIP_lib: ``context.expand(n, -1, -1).permute(1, 0, 2).half()``): one
            # copy per prompt, then rounded. The forward equals rounding first, but the gradient of each copy
            # is rounded to float16 before the copies' gradients are summed, not after.
            deep_tokens = [d.expand(prompts.shape[0], -1, -1).half().float() for d in deep_tokens]
        first = self.cfg.deep_prompt_blocks[0] if self.cfg.deep_prompt_blocks else 2
        return self.text(prompts, token_ids, deep_tokens, deep_first_block=first).float()

    def cached_for_inference(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` (texts, which do not depend on the image) once for inference, reused until the
        prompts change: at batch size 1 on small inputs the text encoder is a sizeable share of the time.
        Keyed by the prompts' storage and in-place version counters (an optimizer step or ``load_state_dict``
        bumps them), the device and the autocast state."""
        device = next(self.prompts.parameters()).device
        key = (
            tuple((p.data_ptr(), p._version) for p in self.prompts.parameters()),
            device,
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )
        cache = self.__dict__.setdefault("_inference_cache", {})
        if name not in cache or cache[name][0] != key:
            with torch.no_grad():
                cache[name] = (key, compute())
        return cache[name][1]


def segmentation_losses(
    probs: torch.Tensor, gt: torch.Tensor, focal_gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three map terms of the authors' train.py for class probabilities ``[B, 2, H, W]`` and a binary
    mask ``[B, H, W]``: ``(focal, dice(S_a, gt), dice(S_n, 1 - gt))``, added in this order by the callers."""
    return (
        focal_loss(probs, gt, gamma=focal_gamma),
        dice_loss(probs[:, ABNORMAL], gt),
        dice_loss(probs[:, NORMAL], 1.0 - gt),
    )


class AnomalyCLIP(AnomalyCLIPBase):
    def __init__(self, cfg: AnomalyCLIPConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(cfg, clip_model, tokenizer)
        self.prompts = ObjectAgnosticPrompts(
            self.text, self.tokenizer, cfg.prompt_length, cfg.deep_prompt_length, len(cfg.deep_prompt_blocks)
        )

    def text_embeddings(self) -> torch.Tensor:
        """``[2, D]`` L2-normalised (0 normal, 1 abnormal); differentiable w.r.t. the prompts."""
        prompts = self.prompts()
        return l2_normalize(
            self.encode_prompts(prompts, self.prompts.token_ids, list(self.prompts.deep_tokens))
        )

    def inference_text_embeddings(self) -> torch.Tensor:
        """:meth:`text_embeddings` for inference, computed once and reused until the prompts change."""
        return self.cached_for_inference("text", self.text_embeddings)

    def scores(
        self, features: ImageFeatures, size: tuple[int, int], text: torch.Tensor | None = None
    ) -> AnomalyCLIPOutput:
        """Logits and maps of (fresh or cached) image features; ``text`` defaults to :meth:`text_embeddings`."""
        text = self.text_embeddings() if text is None else text
        image_logits = features.image_embedding.float() @ text.t() / self.cfg.temperature
        pixel_probs = {
            layer: patch_class_probabilities(patches.float(), text, features.grid, size, self.cfg.temperature)
            for layer, patches in features.patch_embeddings.items()
        }
        return AnomalyCLIPOutput(image_logits, pixel_probs)

    def forward(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> AnomalyCLIPOutput:
        size = size or tuple(images.shape[-2:])
        return self.scores(self.encode_images(images), size)

    def loss(
        self, output: AnomalyCLIPOutput, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """``CE(image) + lambda * sum_layers [focal + dice(S_a, gt) + dice(S_n, 1 - gt)]``.

        ``masks=None`` (auxiliary data without pixel labels) trains with the image loss only.
        """
        image_loss = torch.nn.functional.cross_entropy(output.image_logits, labels.long())
        pixel_loss = image_loss.new_zeros(())
        if masks is not None:
            gt = (masks > 0.5).float()
            for probs in output.pixel_probs.values():
                focal, dice_abnormal, dice_normal = segmentation_losses(probs, gt, self.cfg.focal_gamma)
                pixel_loss = pixel_loss + focal
                pixel_loss = pixel_loss + dice_abnormal + dice_normal
        total = image_loss + self.cfg.pixel_loss_weight * pixel_loss
        return {"loss": total, "image_loss": image_loss, "pixel_loss": pixel_loss}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched inference: ``(image scores [B], smoothed anomaly maps [B, H, W])``, one per image."""
        output = self.scores(self.encode_images(images), size, text=self.inference_text_embeddings())
        return output.image_scores, gaussian_blur(output.anomaly_map(), self.cfg.gaussian_sigma)
