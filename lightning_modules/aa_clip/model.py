"""AA-CLIP (Ma et al., CVPR 2025) as a plain torch model: anomaly-aware CLIP through residual adapters.

Trainable (:class:`AAClipAdapters`, named as the authors' ``AdaptedCLIP`` so that their files load as they
are): a residual adapter after each of the first blocks of both towers, mixed into the stream as
``w * a * |x| / |a| + (1 - w) * x``; a projection that replaces CLIP's text projection; one projection per
map layer and one for the image feature on the vision side.

Two stages (train.py). Stage 1 trains the text side only: the (normal, anomalous) text anchors of each
category must segment the training masks against *frozen* patch features of a "surgery" CLIP (its last
blocks run V-V attention) plus CLIP's image embedding, with an orthogonality penalty between the two
anchors. Stage 2 freezes the anchors and trains the vision side: patch features of every map layer against
the anchors (focal + Dice), the image feature against them (cross-entropy). Test: ``(a - n + 1) / 2`` of the
``100 * cos`` logits per layer, blurred on the patch grid (kornia), upsampled and summed over the layers;
image score ``(cos_a + 1) / 2`` of the image feature. Their metrics_eval's per-category min-max fusion of
both is :data:`IMAGE_SCORE_RULE`, which the evaluator applies once a category is complete.

Numerics as the authors' code, every deviation a switch of :class:`AAClipConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError, require_choices
from lightning_modules.aa_clip.config import (
    AA_CLIP_ACTIVATIONS,
    AA_CLIP_AUGMENTATIONS,
    AA_CLIP_PROMPT_WORDS,
    SURGERY_ATTENTION_AXES,
    TEXT_LOSS_LAYERS,
    AAClipConfig,
)
from lightning_modules.clip.factory import clip_with_activation
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.clip.prompts import get_ensemble, trim_after_end_token
from lightning_modules.clip.vision import default_feature_layers
from lightning_modules.losses import dice_loss, focal_loss
from lightning_modules.metrics.category_scores import CategoryScoreRule
from lightning_modules.ops import kornia_gaussian_blur, l2_normalize

NORMAL, ABNORMAL = 0, 1


def check_choices(cfg: AAClipConfig) -> None:
    require_choices(
        ("activation", cfg.activation, AA_CLIP_ACTIVATIONS),
        ("surgery_attention_over", cfg.surgery_attention_over, SURGERY_ATTENTION_AXES),
        ("text_loss_layers", cfg.text_loss_layers, TEXT_LOSS_LAYERS),
        ("prompt_words", cfg.prompt_words, AA_CLIP_PROMPT_WORDS),
        ("augmentation", cfg.augmentation, AA_CLIP_AUGMENTATIONS),
    )
    for key in ("text_adapt_until", "image_adapt_until"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"method.{key} must be at least 0, got {getattr(cfg, key)}")
    if cfg.surgery_until_layer < 1:
        raise ConfigError(f"method.surgery_until_layer must be at least 1, got {cfg.surgery_until_layer}")


class ResidualAdapter(nn.Module):
    """Their SimpleAdapter: ``LeakyReLU(x W)`` (no bias)."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(fan_in, fan_out, bias=False), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Projection(nn.Module):
    """Their SimpleProj: ``x W`` (no bias), followed by a LeakyReLU when ``relu``."""

    def __init__(self, fan_in: int, fan_out: int, relu: bool) -> None:
        super().__init__()
        linear = nn.Linear(fan_in, fan_out, bias=False)
        self.fc = nn.Sequential(linear, nn.LeakyReLU()) if relu else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def mix_adapter(x: torch.Tensor, adapter: nn.Module, weight: float) -> torch.Tensor:
    """The adapter's output rescaled to each token's norm, mixed into the stream with ``weight``."""
    out = adapter(x)
    out = out * x.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True)
    return weight * out + (1 - weight) * x


class AAClipAdapters(nn.Module):
    """Every trainable parameter of AA-CLIP, named and drawn as their AdaptedCLIP's: ``image_adapter``
    (``layer_adapters``, ``seg_proj``, ``det_proj``) then ``text_adapter`` (the adapters, then the text
    projection), each Linear created with torch's default init and then every weight re-drawn by
    ``xavier_uniform_`` (image side first), so that one torch seed initialises both alike."""

    def __init__(
        self, cfg: AAClipConfig, vision_width: int, text_width: int, embed_dim: int, n_layers: int
    ) -> None:
        super().__init__()
        relu = cfg.projection_relu
        self.image_adapter = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList(
                    ResidualAdapter(vision_width, vision_width) for _ in range(cfg.image_adapt_until)
                ),
                "seg_proj": nn.ModuleList(Projection(vision_width, embed_dim, relu) for _ in range(n_layers)),
                "det_proj": Projection(vision_width, embed_dim, relu),
            }
        )
        self.text_adapter = nn.ModuleList(
            [ResidualAdapter(text_width, text_width) for _ in range(cfg.text_adapt_until)]
            + [Projection(text_width, embed_dim, relu=True)]
        )
        for part in (self.image_adapter, self.text_adapter):
            for parameter in part.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)

    @property
    def text_layers(self) -> nn.ModuleList:
        return self.text_adapter[:-1]

    @property
    def text_projection(self) -> nn.Module:
        return self.text_adapter[-1]


@dataclasses.dataclass
class AAClipOutput:
    patches: list[torch.Tensor]  # per feature layer [B, N, D], L2-normalised
    image_feature: torch.Tensor  # [B, D]: the mean of the L2-normalised det_proj patch features
    grid: tuple[int, int]


def layer_logits(patches: torch.Tensor, texts: torch.Tensor, temperature: float) -> torch.Tensor:
    """Their ``100.0 * torch.matmul(patch, text)`` with ``[B, D, 2]`` texts: ``[B, N, 2]``."""
    return (1.0 / temperature) * torch.matmul(patches, texts)


def logit_grid(logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, N, 2]`` -> ``[B, 2, h, w]`` on the patch grid."""
    return logits.transpose(1, 2).reshape(logits.shape[0], logits.shape[2], *grid)


def layer_probs(logits: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Training maps (calculate_similarity_map, test=False): logits upsampled (bilinear, align_corners=True),
    then a softmax over (normal, anomalous) per pixel: ``[B, 2, H, W]``."""
    maps = F.interpolate(logit_grid(logits, grid), size=size, mode="bilinear", align_corners=True)
    return maps.softmax(dim=1)


def segmentation_loss(probs: torch.Tensor, masks: torch.Tensor, gamma: float) -> torch.Tensor:
    """Their calculate_seg_loss: focal + Dice(p_n, 1 - gt) + Dice(p_a, gt), Dice per image."""
    gt = (masks > 0.5).float()
    return (
        focal_loss(probs, gt, gamma=gamma)
        + dice_loss(probs[:, NORMAL], 1 - gt)
        + dice_loss(probs[:, ABNORMAL], gt)
    )


class AAClip(FrozenCLIP):
    """Frozen CLIP (exact GELU by default, as the authors' model build) plus :class:`AAClipAdapters`."""

    def __init__(self, cfg: AAClipConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        check_choices(cfg)
        clip_model, tokenizer, _ = clip_with_activation(cfg.backbone, clip_model, tokenizer, cfg.activation)
        super().__init__(cfg.backbone, clip_model, tokenizer)
        self.cfg = cfg
        self.prompt_ensemble = get_ensemble("aa_clip")
        depth = self.vision.depth
        layers = list(cfg.feature_layers or default_feature_layers(depth))
        if any(not 1 <= layer <= depth for layer in layers):
            raise ConfigError(f"method.feature_layers must lie in 1..{depth}, got {layers}")
        if cfg.image_adapt_until > depth or cfg.text_adapt_until > self.text.depth:
            raise ConfigError(
                f"method.image_adapt_until ({cfg.image_adapt_until}) and text_adapt_until "
                f"({cfg.text_adapt_until}) cannot exceed the towers' depths ({depth}, {self.text.depth})"
            )
        if cfg.surgery_until_layer - 1 > depth:
            raise ConfigError(
                f"method.surgery_until_layer={cfg.surgery_until_layer} makes the last "
                f"{cfg.surgery_until_layer - 1} blocks V-V blocks, but the vision tower has {depth}"
            )
        self.feature_layers = layers
        # their DAPM_replace(n): resblocks[-1] .. resblocks[-(n - 1)] (1-indexed: depth - n + 2 .. depth)
        self.first_surgery_block = depth - cfg.surgery_until_layer + 2
        self.adapters = AAClipAdapters(
            cfg, self.vision.width, self.text.width, self.vision.output_dim, len(layers)
        )
        self.register_buffer("class_tokens", None, persistent=False)  # [C, S, L] after set_classes
        self.n_normal = len(self.prompt_ensemble.normal_states) * len(self.prompt_ensemble.templates)

    # --- texts ------------------------------------------------------------------------------------
    def set_classes(self, words: Sequence[str]) -> None:
        """Tokenise each category's sentences (their anchors are recomputed whenever the adapters change:
        :meth:`freeze_texts` stores them for stage 2 and the test)."""
        sentences = []
        for word in words:
            normal, abnormal = self.prompt_ensemble.sentences(word)
            sentences.append(normal + abnormal)
        device = self.text.token_embedding.weight.device
        ids = trim_after_end_token(self.tokenizer([s for group in sentences for s in group]), self.text)
        self.class_tokens = ids.view(len(words), len(sentences[0]), -1).to(device)
        self.class_text = None

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Their AdaptedCLIP.encode_text: adapters after the first blocks, ``ln_final`` at the end token,
        then the adapters' projection instead of CLIP's: ``[n, D]`` (not normalised)."""
        text, adapters, weight = self.text, self.adapters.text_layers, self.cfg.text_adapt_weight
        length = token_ids.shape[1]
        x = text.embed(token_ids) + text.positional_embedding[:length]
        mask = text.attn_mask[:length, :length] if text.attn_mask is not None else None
        for i, block in enumerate(text.transformer.resblocks):
            x = (
                block(x, attn_mask=mask)
                if text.batch_first
                else block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
            )
            if i < len(adapters):
                x = mix_adapter(x, adapters[i], weight)
        x = text.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
        return self.adapters.text_projection(pooled)

    def category_texts(self, category_ids: torch.Tensor) -> torch.Tensor:
        """``[C', 2, D]`` anchors of the given categories through the adapted text tower: each sentence
        normalised, averaged per state, normalised (get_adapted_single_class_text_embedding)."""
        if self.class_tokens is None:
            raise RuntimeError("call set_classes(words) with the categories' object words first")
        ids = self.class_tokens[category_ids.to(self.class_tokens.device)]
        count, per_category, length = ids.shape
        features = l2_normalize(self.encode_text(ids.reshape(count * per_category, length)))
        features = features.view(count, per_category, -1)
        states = [features[:, : self.n_normal].mean(dim=1), features[:, self.n_normal :].mean(dim=1)]
        return l2_normalize(torch.stack(states, dim=1))

    @torch.no_grad()
    def freeze_texts(self) -> None:
        """The anchors of every category, computed once (after stage 1, as train.py and test.py do)."""
        self.class_text = self.category_texts(
            torch.arange(len(self.class_tokens), device=self.class_tokens.device)
        )

    def batch_texts(self, category_ids: torch.Tensor, trainable: bool) -> torch.Tensor:
        """``[B, D, 2]`` anchors of each image's category: recomputed with gradients for the batch's
        categories (stage 1), else the frozen ones."""
        if not trainable:
            if self.class_text is None:
                self.freeze_texts()
            return self.class_text_for(category_ids).transpose(1, 2)
        unique, inverse = torch.unique(category_ids, return_inverse=True)
        return self.category_texts(unique)[inverse.to(unique.device)].transpose(1, 2)

    # --- images -----------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> AAClipOutput:
        """Their AdaptedCLIP.forward: adapters after the first blocks; each feature layer's patch tokens
        through ``ln_post`` and its projection, normalised; the image feature is the mean of the last
        layer's normalised ``det_proj`` patch features."""
        adapters = self.adapters.image_adapter["layer_adapters"]
        weight = self.cfg.image_adapt_weight
        x = self.vision.embed(images)
        tokens = []
        for i, block in enumerate(self.vision.blocks):
            x = self.vision._block(block, x)
            if i < len(adapters):
                x = mix_adapter(x, adapters[i], weight)
            if i + 1 in self.feature_layers:
                tokens.append(self.vision.visual.ln_post(x[:, 1:]))
        seg = [
            l2_normalize(proj(t))
            for proj, t in zip(self.adapters.image_adapter["seg_proj"], tokens, strict=True)
        ]
        det = l2_normalize(self.adapters.image_adapter["det_proj"](tokens[-1])).mean(dim=1)
        return AAClipOutput(seg, det, (self.vision.grid, self.vision.grid))

    def _surgery_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Their ``Attention`` in a block: ``softmax(V V^T / sqrt(d)) V`` through the block's output
        projection (the Q-K path is dropped), then the usual residual and MLP. ``batch``: the softmax runs
        over the images of the batch at each token position, as their (tokens, batch, width) tensor read as
        (batch, tokens, width) does; ``tokens``: over each image's tokens."""
        attn: nn.MultiheadAttention = block.attn
        batch, length, width = x.shape
        heads = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        v = qkv[..., 2 * width :].reshape(batch, length, heads, width // heads)
        if self.cfg.surgery_attention_over == "batch":
            v = v.permute(1, 2, 0, 3)  # [N, heads, B, d]
            out = F.scaled_dot_product_attention(v, v, v).permute(2, 0, 1, 3)
        else:
            v = v.permute(0, 2, 1, 3)  # [B, heads, N, d]
            out = F.scaled_dot_product_attention(v, v, v).permute(0, 2, 1, 3)
        out = F.linear(out.reshape(batch, length, width), attn.out_proj.weight, attn.out_proj.bias)
        x = x + block.ls_1(out)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    @torch.no_grad()
    def surgery_patches(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stage 1's frozen image side: per feature layer ``[B, N, D]`` = the surgery CLIP's patch tokens
        through ``ln_post`` and ``proj``, normalised, plus CLIP's normalised image embedding (train.py)."""
        x = self.vision.embed(images)
        tokens: dict[int, torch.Tensor] = {}
        surgery = None
        for i, block in enumerate(self.vision.blocks, start=1):
            if i >= self.first_surgery_block:
                surgery = self._surgery_block(block, x if surgery is None else surgery)
            x = self.vision._block(block, x)
            if i in self.feature_layers:
                tokens[i] = (x if surgery is None else surgery)[:, 1:]
        image_embedding = self.image_embedding(x[:, 0])
        return [
            l2_normalize(self.vision.project(tokens[i])) + image_embedding[:, None]
            for i in self.feature_layers
        ]

    # --- training ---------------------------------------------------------------------------------
    def text_stage_loss(
        self, images: torch.Tensor, masks: torch.Tensor, category_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Stage 1 (train_text_adapter): segmentation loss of the frozen surgery patches against the
        trainable anchors (the last layer only, as their loop assigns it, or all layers) + the squared mean
        normal-anomalous anchor cosine, weighted ``text_norm_weight``."""
        patches = self.surgery_patches(images)
        texts = self.batch_texts(category_ids, trainable=True)
        size, grid = tuple(masks.shape[-2:]), (self.vision.grid, self.vision.grid)
        chosen = patches[-1:] if self.cfg.text_loss_layers == "last" else patches
        seg = sum(
            segmentation_loss(
                layer_probs(layer_logits(p, texts, self.cfg.temperature), grid, size),
                masks,
                self.cfg.focal_gamma,
            )
            for p in chosen
        )
        orthogonal = (texts[:, :, NORMAL] * texts[:, :, ABNORMAL]).sum(dim=1).mean() ** 2
        loss = seg + self.cfg.text_norm_weight * orthogonal
        return {"loss": loss, "seg_loss": seg, "orthogonal_loss": orthogonal}

    def image_stage_loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, category_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Stage 2 (train_image_adapter): cross-entropy of the image feature's raw cosines with the frozen
        anchors + the segmentation loss of every feature layer."""
        output = self(images)
        texts = self.batch_texts(category_ids, trainable=False)
        image_logits = torch.matmul(output.image_feature[:, None], texts)[:, 0]
        image_loss = F.cross_entropy(image_logits, (labels > 0.5).long())
        size = tuple(masks.shape[-2:])
        seg = sum(
            segmentation_loss(
                layer_probs(layer_logits(p, texts, self.cfg.temperature), output.grid, size),
                masks,
                self.cfg.focal_gamma,
            )
            for p in output.patches
        )
        return {"loss": image_loss + seg, "image_loss": image_loss, "seg_loss": seg}

    # --- test -------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int], medical: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], maps [B, H, W])`` as their get_predictions, before metrics_eval's fusion."""
        output = self(images)
        texts = self.batch_texts(category_ids, trainable=False)
        scores = (torch.matmul(output.image_feature[:, None], texts)[:, 0, ABNORMAL] + 1) / 2
        cfg = self.cfg
        kernel, sigma = (
            (cfg.medical_blur_kernel, cfg.medical_blur_sigma)
            if medical
            else (cfg.industrial_blur_kernel, cfg.industrial_blur_sigma)
        )
        maps = 0
        for patches in output.patches:
            logits = logit_grid(layer_logits(patches, texts, cfg.temperature), output.grid)
            raw = (logits[:, ABNORMAL] + 1 - logits[:, NORMAL]) / 2
            blurred = kornia_gaussian_blur(raw, kernel, sigma)
            maps = (
                maps + F.interpolate(blurred[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
            )
        return scores, maps


def min_max(values: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
    """metrics_eval's ``(x - min) / (max - min)`` over all of a category's values (``low``: their minimum,
    where ``values`` holds only the maxima), skipped when the maximum is already 1."""
    high = values.max()
    if float(high) == 1.0:
        return values
    low = values.min() if low is None else low
    return (values - low) / (high - low)


#: predict_batch's score parts per image: (image score, map maximum, map minimum, 1 for a medical dataset)
SCORE, MAP_MAX, MAP_MIN, MEDICAL = range(4)


def combine_image_scores(parts: torch.Tensor) -> torch.Tensor:
    """metrics_eval's image scores of one category's test images from their parts ``[n, 4]``: scores and
    maps min-max normalised over the category (the maps over all their pixels), then ``0.5 * max(map) +
    0.5 * score`` (industrial) or ``max(map)`` (medical)."""
    peak = min_max(parts[:, MAP_MAX], parts[:, MAP_MIN].min())
    return peak if bool(parts[0, MEDICAL]) else peak * 0.5 + min_max(parts[:, SCORE]) * 0.5


def image_score_parts(image_scores: torch.Tensor, maps: torch.Tensor, medical: bool) -> torch.Tensor:
    """The ``[B, 4]`` parts :func:`combine_image_scores` takes, from scores ``[B]`` and maps ``[B, H, W]``."""
    flag = torch.full_like(image_scores, float(medical))
    return torch.stack([image_scores, maps.amax(dim=(-2, -1)), maps.amin(dim=(-2, -1)), flag], dim=1)


def per_image_score(parts: torch.Tensor) -> torch.Tensor:
    """One image alone (pictures, ``zsad predict``): the fusion without the category's normalisation."""
    fused = parts[:, MAP_MAX] * 0.5 + parts[:, SCORE] * 0.5
    return torch.where(parts[:, MEDICAL] > 0, parts[:, MAP_MAX], fused)


IMAGE_SCORE_RULE = CategoryScoreRule(
    name="aa_clip", parts=4, combine=combine_image_scores, per_image=per_image_score
)


def fused_image_scores(image_scores: torch.Tensor, maps: torch.Tensor, medical: bool) -> torch.Tensor:
    """metrics_eval's image scores of one category's test images (scores ``[n]``, maps ``[n, H, W]``)."""
    return combine_image_scores(image_score_parts(image_scores, maps, medical))
