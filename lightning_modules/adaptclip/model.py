"""AdaptCLIP as a plain torch model on a frozen CLIP (their adaptcliplib, train.py and test.py).

- Frozen: OpenAI CLIP with AnomalyCLIP's V-V dual path (DPAM) on blocks 6..24; the image embedding is the
  original path's class token ``@ proj`` without ``ln_post``; the feature layers' tokens (V-V path) go
  through ``ln_post @ proj`` with their class token kept (the adapters' BatchNorm statistics include it).
- Static texts: 7 normal / 4 anomalous states of "object" in 21 templates, their CLIP features averaged
  (not normalised per prompt) into one normal and one anomalous text.
- Visual adapter: residual MLPs on the image embedding and the last layer's tokens, scored against the
  static texts (``cos / 0.07``; per patch softmax, bilinearly upsampled).
- Textual adapter: learned prompts ``[V1..V12] .`` / ``[W1..W12] .``, scored against the raw image embedding
  and last-layer tokens. "Alternating" in their code: each adapter learns against the other modality's
  frozen features (the visual one against the static texts, the textual one against the raw image
  features), the losses summed in one step.
- Prompt-query adapter (k-shot, and trained with one prompt image per training sample): adapters.PQAdapter.

Zero-shot: ``map = fuse(visual, textual)``, Gaussian sigma 4, ``score = fuse(p_visual, p_textual, max map)``.
k-shot: ``map = hmean(fuse(visual, textual, mean_layers pq), hmean_layers alignment)``, smoothed, ``score =
hmean(fuse(p_visual, p_textual, mean_layers p_pq), max map)``; ``fuse`` is ``fusion`` (their
``average_mean``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError, require_choices
from lightning_modules.adaptclip.adapters import PQAdapter, VisualAdapter
from lightning_modules.adaptclip.config import FUSIONS, TRAIN_PROMPT_SOURCES, AdaptCLIPConfig
from lightning_modules.anomalyclip.model import segmentation_losses
from lightning_modules.clip import (
    DualPathVisionEncoder,
    LearnedContextPrompts,
    PromptTextEncoder,
    create_clip,
)
from lightning_modules.ops import gaussian_blur, upsample_patch_probabilities

NORMAL, ABNORMAL = 0, 1

STATIC_NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
STATIC_ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
# Their template list, with its duplicated "a jpeg corrupted photo of the {}." (21 entries).
STATIC_TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def static_prompts(states: tuple[str, ...], word: str = "object") -> list[str]:
    """Their ``TextualAdapter.prompt``: every template for every state, states outermost."""
    return [template.format(state.format(word)) for state in states for template in STATIC_TEMPLATES]


def fuse(tensors: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Their ``fusion_fun``: the element-wise arithmetic (``average_mean``) or harmonic mean."""
    stacked = torch.stack(tensors)
    if kind == "harmonic_mean":
        return stacked.shape[0] / torch.sum(1.0 / stacked, dim=0)
    return stacked.mean(dim=0)


@dataclasses.dataclass
class ImageFeatures:
    """Frozen features of a batch (cacheable): independent of every adapter."""

    image_embedding: torch.Tensor  # [B, D] original-path class token @ proj, not normalised
    tokens: list[torch.Tensor]  # per feature layer [B, 1 + N, D] ln_post @ proj, class token first
    grid: tuple[int, int]


@dataclasses.dataclass
class AdaptCLIPOutput:
    visual_logits: torch.Tensor  # [B, 2]
    visual_probs: torch.Tensor  # [B, 2, H, W]
    textual_logits: torch.Tensor
    textual_probs: torch.Tensor
    pq_logits: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per layer [B, 2]
    pq_probs: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per layer [B, 2, H, W]
    pq_aligns: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per layer [B, 1, H, W]


def check_config(cfg: AdaptCLIPConfig) -> None:
    require_choices(
        ("fusion", cfg.fusion, FUSIONS), ("train_prompts", cfg.train_prompts, TRAIN_PROMPT_SOURCES)
    )
    if cfg.train_prompt_images < 1:
        raise ConfigError(f"train_prompt_images must be at least 1, got {cfg.train_prompt_images}")


class AdaptCLIP(nn.Module):
    def __init__(self, cfg: AdaptCLIPConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        if clip_model is None:
            clip_model, tokenizer = create_clip(
                cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.cache_dir
            )
        clip_model.eval().requires_grad_(False)
        self.clip = clip_model
        self.tokenizer = tokenizer
        depth = len(clip_model.visual.transformer.resblocks)
        self.vision = DualPathVisionEncoder(
            clip_model.visual,
            image_size=cfg.backbone.image_size,
            dpam_blocks=range(cfg.dpam_start_block, depth + 1),
            pos_embed_interpolation=cfg.backbone.pos_embed_interpolation,
        )
        bad = [layer for layer in cfg.feature_layers if not 1 <= layer <= depth]
        if bad or not cfg.feature_layers:
            raise ConfigError(
                f"feature_layers must be non-empty and lie in 1..{depth}, got {cfg.feature_layers}"
            )
        if self.vision.grid**2 < PQAdapter.TOPK:
            raise ConfigError(
                f"the prompt-query adapter pools the top {PQAdapter.TOPK} of {self.vision.grid**2} patches"
            )
        self.text = PromptTextEncoder(clip_model)
        dim = self.vision.output_dim
        # their TextualAdapter: "[V1..Vn]." / "[W1..Wn]." (ctx_pos / ctx_neg), normal init with std 0.02
        self.textual = LearnedContextPrompts(self.text, tokenizer, cfg.prompt_length, ("{}.", "{}."))
        self.visual = VisualAdapter(dim, cfg.visual_reduction)
        self.pq = PQAdapter(dim, cfg.pq_mid_dim, len(cfg.feature_layers), cfg.pq_context, cfg.pq_share_heads)
        with torch.no_grad():
            texts = [
                self.text.encode(tokenizer(static_prompts(states))).float()
                for states in (STATIC_NORMAL_STATES, STATIC_ANOMALOUS_STATES)
            ]
        # [2, D]: the mean (not normalised) CLIP feature of the normal and of the anomalous prompts
        self.register_buffer("static_text", torch.stack([t.mean(dim=0) for t in texts]), persistent=False)
        # k-shot: category id -> per feature layer the references' tokens [K, 1 + N, D]; empty: zero-shot
        self.memory: dict[int, list[torch.Tensor]] = {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.textual.parameters(), *self.visual.parameters(), *self.pq.parameters()]

    def train(self, mode: bool = True) -> AdaptCLIP:
        """The frozen CLIP always stays in eval mode, whatever Lightning asks (the adapters' BatchNorms follow)."""
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        features = self.vision(images, layers=self.cfg.feature_layers)
        embedding = self.vision.project(features.class_token, ln_post=False)
        tokens = [
            self.vision.project(features.tokens[layer], ln_post=True) for layer in self.cfg.feature_layers
        ]
        return ImageFeatures(embedding, tokens, features.grid)

    # --- feature cache --------------------------------------------------------------------------------
    def features_to_tensors(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        tokens = {
            f"tokens_{layer}": t for layer, t in zip(self.cfg.feature_layers, features.tokens, strict=True)
        }
        return {"image_embedding": features.image_embedding} | tokens

    def features_from_tensors(self, tensors: dict[str, torch.Tensor]) -> ImageFeatures:
        tokens = [tensors[f"tokens_{layer}"] for layer in self.cfg.feature_layers]
        return ImageFeatures(tensors["image_embedding"], tokens, (self.vision.grid, self.vision.grid))

    # --- scoring ----------------------------------------------------------------------------------------
    def learned_text(self) -> torch.Tensor:
        """``[2, D]`` L2-normalised features of the textual adapter's prompts (0 normal, 1 anomalous)."""
        text = self.text(self.textual(), self.textual.token_ids).float()
        return text / text.norm(dim=-1, keepdim=True)

    def _score(
        self,
        embedding: torch.Tensor,
        patches: torch.Tensor,
        text: torch.Tensor,
        grid: tuple[int, int],
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        patches = patches / patches.norm(dim=-1, keepdim=True)
        logits = embedding @ text.t() / self.cfg.temperature
        probs = (patches @ text.t() / self.cfg.temperature).softmax(dim=-1)
        return logits, upsample_patch_probabilities(probs[:, 1:], grid, size)

    def scores(
        self,
        features: ImageFeatures,
        size: tuple[int, int],
        prompt_tokens: list[torch.Tensor] | None = None,
    ) -> AdaptCLIPOutput:
        """Every adapter's logits and maps; the prompt-query adapter's only with ``prompt_tokens`` (per
        feature layer ``[B, S, 1 + N, D]``: each query's prompt images)."""
        static = self.static_text / self.static_text.norm(dim=-1, keepdim=True)
        embedding, last = features.image_embedding.float(), features.tokens[-1].float()
        visual = self._score(
            self.visual.global_adapter(embedding),
            self.visual.local_adapter(last),
            static,
            features.grid,
            size,
        )
        textual = self._score(embedding, last, self.learned_text(), features.grid, size)
        output = AdaptCLIPOutput(*visual, *textual)
        if prompt_tokens is not None:
            queries = [t.float() for t in features.tokens]
            prompts = [t.float() for t in prompt_tokens]
            output.pq_logits, output.pq_probs, output.pq_aligns = self.pq(
                queries, prompts, features.grid, size
            )
        return output

    def loss(
        self, output: AdaptCLIPOutput, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """train.py: per branch (visual, textual, each prompt-query layer) ``CE(image) + focal + dice(S_a,
        gt) + dice(S_n, 1 - gt)``, every weight 1. ``masks=None``: image losses only."""
        labels = labels.long()
        branches = [
            (output.visual_logits, output.visual_probs),
            (output.textual_logits, output.textual_probs),
        ]
        image_loss = labels.new_zeros((), dtype=torch.float32)
        for logits, _ in branches:
            image_loss = image_loss + F.cross_entropy(logits, labels)
        for logits in output.pq_logits:
            image_loss = image_loss + F.cross_entropy(logits, labels)
        pixel_loss = image_loss.new_zeros(())
        if masks is not None:
            gt = (masks > 0.5).float()
            for probs in [p for _, p in branches] + list(output.pq_probs):
                focal, dice_abnormal, dice_normal = segmentation_losses(probs, gt, self.cfg.focal_gamma)
                pixel_loss = pixel_loss + focal
                pixel_loss = pixel_loss + dice_abnormal
                pixel_loss = pixel_loss + dice_normal
        return {"loss": pixel_loss + image_loss, "image_loss": image_loss, "pixel_loss": pixel_loss}

    # --- k-shot -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        """The memory of category ``category_id``: its K reference images' feature-layer tokens."""
        self.memory[int(category_id)] = [t.float() for t in self.encode_images(images).tokens]

    def clear_references(self) -> None:
        self.memory = {}

    def memory_tokens(self, category_ids: torch.Tensor) -> list[torch.Tensor]:
        """Per feature layer ``[B, K, 1 + N, D]``: each query's category memory (their prompt_association)."""
        rows = [self.memory[int(c)] for c in category_ids.tolist()]
        return [torch.stack([row[i] for row in rows]) for i in range(len(self.cfg.feature_layers))]

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """test.py: ``(image scores [B], smoothed maps [B, H, W])``, k-shot once references are set."""
        features = self.encode_images(images)
        prompts = self.memory_tokens(category_ids) if self.memory else None
        output = self.scores(features, size, prompts)
        return self.combine(output)

    def combine(self, output: AdaptCLIPOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Their test loop's fusion of the adapters' maps and scores, smoothing and ``nan_to_num``."""
        fusion = self.cfg.fusion
        maps = [output.visual_probs[:, ABNORMAL], output.textual_probs[:, ABNORMAL]]
        scores = [
            output.visual_logits.softmax(-1)[:, ABNORMAL],
            output.textual_logits.softmax(-1)[:, ABNORMAL],
        ]
        if output.pq_probs:
            maps.append(
                torch.cat([p[:, ABNORMAL : ABNORMAL + 1] for p in output.pq_probs], dim=1).mean(dim=1)
            )
            align = fuse(output.pq_aligns, "harmonic_mean")[:, 0]
            anomaly_map = fuse([fuse(maps, fusion), align], "harmonic_mean")
            anomaly_map = gaussian_blur(anomaly_map, self.cfg.gaussian_sigma)
            pq_scores = torch.cat([x.softmax(-1).unsqueeze(-1) for x in output.pq_logits], dim=-1).mean(
                dim=-1
            )
            scores.append(pq_scores[:, ABNORMAL])
            maximum = anomaly_map.flatten(1).amax(dim=1)
            image_scores = fuse([fuse(scores, fusion), maximum], "harmonic_mean")
        else:
            anomaly_map = gaussian_blur(fuse(maps, fusion), self.cfg.gaussian_sigma)
            image_scores = fuse([*scores, anomaly_map.flatten(1).amax(dim=1)], fusion)
        return torch.nan_to_num(image_scores, nan=0.0, posinf=0.0, neginf=0.0), torch.nan_to_num(
            anomaly_map, nan=0.0, posinf=0.0, neginf=0.0
        )
