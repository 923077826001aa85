"""AdaCLIP (Cao et al., ECCV 2024) as a plain torch model: hybrid learnable prompts in both CLIP towers.

Trainable (:class:`HybridPrompts`): *static* prompt tokens shared by all images and *dynamic* ones made per
image by linear layers from CLIP's frozen image embedding, added together (hybrid) and inserted into the
first ``prompting_depth`` blocks of the vision tower (appended after the patch tokens) and of the text tower
(overwriting positions ``1..length`` of every sentence from block 2 on, block 1 seeing the sentence as
written); one ``Linear(width -> embed)`` per map layer on the raw patch tokens and one ``Linear(embed ->
embed)`` on the image embedding. Texts: AdaCLIP's ensemble (7 normal / 5 anomalous states x 4 templates)
through the prompted text tower, per image (its dynamic prompts differ). Maps: ``100 * cos`` of each layer's
patches against the two texts. Image score: softmax of ``100 * cos`` of the hybrid semantic fusion (HSF):
the class embedding mixed with the mean of k-means cluster centres of the most anomalous patches.

Numerics as the authors' code (method/adaclip.py), every deviation a switch of :class:`AdaCLIPConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from datamodules.errors import ConfigError, require_choices
from lightning_modules.adaclip.config import (
    ADACLIP_ACTIVATIONS,
    ADACLIP_PROMPT_WORDS,
    DICE_UNITS,
    MASKLESS_PIXEL_LOSSES,
    MOSAIC_LABELS,
    PROMPTING_BRANCHES,
    PROMPTING_TYPES,
    AdaCLIPConfig,
)
from lightning_modules.clip.factory import clip_with_activation
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.clip.prompts import encode_prompt_ensemble, trim_after_end_token
from lightning_modules.clip.vision import default_feature_layers
from lightning_modules.losses import dice_loss, focal_loss
from lightning_modules.ops import gaussian_blur, normalized_as_stored

NORMAL, ABNORMAL = 0, 1


def check_choices(cfg: AdaCLIPConfig) -> None:
    require_choices(
        ("prompting_type", cfg.prompting_type, PROMPTING_TYPES),
        ("prompting_branch", cfg.prompting_branch, PROMPTING_BRANCHES),
        ("activation", cfg.activation, ADACLIP_ACTIVATIONS),
        ("prompt_words", cfg.prompt_words, ADACLIP_PROMPT_WORDS),
        ("dice_unit", cfg.dice_unit, DICE_UNITS),
        ("mosaic_label", cfg.mosaic_label, MOSAIC_LABELS),
        ("maskless_pixel_loss", cfg.maskless_pixel_loss, MASKLESS_PIXEL_LOSSES),
    )
    if cfg.prompting_branch and not cfg.prompting_type:
        raise ConfigError(
            f"method.prompting_branch={cfg.prompting_branch!r} needs a prompting_type (S, D or SD); "
            "prompting_branch='' trains the linear layers only"
        )
    if cfg.prompting_depth < 1 or cfg.prompting_length < 1:
        raise ConfigError("method.prompting_depth and method.prompting_length must be at least 1")
    if cfg.use_hsf and (cfg.k_clusters < 1 or cfg.hsf_tokens_per_cluster < 1):
        raise ConfigError("method.k_clusters and method.hsf_tokens_per_cluster must be at least 1")


def _linears(count: int, fan_in: int, fan_out: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(fan_in, fan_out) for _ in range(count))


def _static(depth: int, length: int, width: int, std: float) -> nn.ParameterList:
    return nn.ParameterList(nn.Parameter(torch.empty(length, width).normal_(std=std)) for _ in range(depth))


class HybridPrompts(nn.Module):
    """Every trainable parameter of AdaCLIP, drawn in the authors' order (AdaCLIP.__init__: text static
    prompts, visual static prompts, patch heads, class head, dynamic visual then text generators), so that
    one torch seed initialises both alike. What their forward never uses is drawn and dropped (the text
    tower's block-1 static prompt, the generator of a branch without prompts): a parameter without
    gradient would stall DDP.
    """

    def __init__(
        self,
        cfg: AdaCLIPConfig,
        text_shape: tuple[int, int],
        vision_shape: tuple[int, int],
        embed_dim: int,
        n_layers: int,
    ) -> None:
        """``text_shape`` / ``vision_shape``: (blocks, width) of each tower."""
        super().__init__()
        static, dynamic = "S" in cfg.prompting_type, "D" in cfg.prompting_type
        self.visual = "V" in cfg.prompting_branch
        self.text = "L" in cfg.prompting_branch
        self.length, depth = cfg.prompting_length, cfg.prompting_depth
        (text_blocks, text_width), (vision_blocks, vision_width) = text_shape, vision_shape
        # blocks prompted in each tower: the first `depth` that exist (their `indx < depth` test); in the
        # text tower from block 2 on (their PromptLayer leaves block 1's sentence as written)
        self.text_blocks = max(0, min(depth, text_blocks) - 1)
        self.vision_blocks = min(depth, vision_blocks)
        std = cfg.prompt_init_std
        text_static = _static(depth, self.length, text_width, std) if self.text and static else None
        visual_static = _static(depth, self.length, vision_width, std) if self.visual and static else None
        self.text_static = (
            nn.ParameterList(list(text_static)[1 : 1 + self.text_blocks]) if text_static is not None else None
        )
        self.visual_static = (
            nn.ParameterList(list(visual_static)[: self.vision_blocks]) if visual_static is not None else None
        )
        self.patch_heads = _linears(n_layers, vision_width, embed_dim)
        self.cls_head = nn.Linear(embed_dim, embed_dim)
        dynamic_visual = _linears(self.length, embed_dim, vision_width) if dynamic else None
        dynamic_text = _linears(self.length, embed_dim, text_width) if dynamic else None
        self.dynamic_visual = dynamic_visual if self.visual else None
        self.dynamic_text = dynamic_text if self.text else None

    @staticmethod
    def generate(generators: nn.ModuleList | None, image_embedding: torch.Tensor) -> torch.Tensor | None:
        """Dynamic prompts ``[B, length, width]``: one linear layer per token (their ProjectLayer, stacked)."""
        if generators is None:
            return None
        return torch.stack([head(image_embedding) for head in generators], dim=1)

    def contexts(
        self, static: nn.ParameterList | None, dynamic: torch.Tensor | None, blocks: int, batch: int
    ) -> list[torch.Tensor]:
        """For each of ``blocks`` prompted blocks ``[B, length, width]``: static + dynamic (hybrid), or
        either alone."""
        out = []
        for j in range(blocks):
            if static is not None and dynamic is not None:
                out.append(dynamic + static[j])
            elif static is not None:
                out.append(static[j].expand(batch, -1, -1))
            else:
                out.append(dynamic)
        return out


@dataclasses.dataclass
class AdaCLIPOutput:
    image_probs: torch.Tensor  # [B, 2] softmax(100 cos) of the (fused) image feature: normal, anomalous
    patch_logits: list[torch.Tensor]  # per feature layer [B, N, 2]: 100 cos on the token grid
    grid: tuple[int, int]
    texts: torch.Tensor  # [B, D, 2] each image's (normal, anomalous) texts, L2-normalised
    patches: list[torch.Tensor]  # per feature layer [B, N, D]: the heads' patch embeddings, L2-normalised
    class_feature: torch.Tensor  # [B, D] the class head's image feature, L2-normalised
    fused: torch.Tensor | None  # [B, D] HSF's fused patch feature (None without HSF)

    @property
    def image_scores(self) -> torch.Tensor:
        return self.image_probs[:, ABNORMAL]

    def layer_logit_maps(self, size: tuple[int, int]) -> list[torch.Tensor]:
        """Each layer's logits on the grid upsampled to ``size`` (bilinear, align_corners=True): ``[B, 2, H, W]``."""
        maps = []
        for logits in self.patch_logits:
            grid = logits.transpose(1, 2).reshape(logits.shape[0], 2, *self.grid)
            maps.append(F.interpolate(grid, size=size, mode="bilinear", align_corners=True))
        return maps

    def layer_probs(self, size: tuple[int, int]) -> list[torch.Tensor]:
        """Training: a softmax per layer of its upsampled logits (their ``aggregation=False``)."""
        return [m.softmax(dim=1) for m in self.layer_logit_maps(size)]

    def anomaly_map(self, size: tuple[int, int]) -> torch.Tensor:
        """Test: the layers' upsampled logits averaged, softmaxed, ``(p_a + 1 - p_n) / 2`` (``aggregation=True``)."""
        probs = torch.stack(self.layer_logit_maps(size), dim=1).mean(dim=1).softmax(dim=1)
        return (probs[:, ABNORMAL] + 1 - probs[:, NORMAL]) / 2.0


def hybrid_semantic_fusion(
    patches: Sequence[torch.Tensor],
    logits: Sequence[torch.Tensor],
    k_clusters: int,
    tokens_per_cluster: int,
    random_states: Sequence[int],
) -> torch.Tensor:
    """HSF as the authors' released code (their "upgraded" version): ``[B, D]``, L2-normalised.

    The ``k_clusters * tokens_per_cluster`` patches with the highest anomaly probability (softmax of the
    layers' mean logits) are taken from every layer, clustered with scikit-learn's k-means on their
    concatenated layer embeddings (one ``random_state`` per image: k-means++ draws), each cluster's centre
    is the mean of its members' embeddings over all layers, and the result is the mean of the centres.
    Gradients reach the patch embeddings through the selected tokens (the cluster labels are constants).
    """
    probs = torch.mean(torch.stack(list(logits), dim=1), dim=1).softmax(dim=2)[:, :, ABNORMAL]
    k = min(probs.shape[1], k_clusters * tokens_per_cluster)
    top = torch.topk(probs, k=k, dim=1).indices
    selected = [p.gather(1, top[..., None].expand(-1, -1, p.shape[-1])) for p in patches]
    stacked = torch.cat(selected, dim=2).detach().cpu().numpy()
    summed = torch.stack(selected).sum(dim=0)  # [B, k, D]: each patch's embeddings summed over layers
    centres = []
    for b in range(summed.shape[0]):
        kmeans = KMeans(n_clusters=k_clusters, n_init="auto", random_state=int(random_states[b]))
        labels = torch.as_tensor(kmeans.fit_predict(stacked[b]).astype(np.int64), device=summed.device)
        members = F.one_hot(labels, k_clusters).to(summed.dtype).t()  # [K, k]
        sums = members @ summed[b]  # an empty cluster gives 0 / 0 = NaN, as their mean of nothing
        counts = members.sum(dim=1, keepdim=True) * len(selected)
        centres.append((sums / counts).mean(dim=0))
    return F.normalize(torch.stack(centres), dim=1)


class AdaCLIP(FrozenCLIP):
    """Frozen CLIP (exact GELU by default, as the authors' model build) plus :class:`HybridPrompts`."""

    def __init__(self, cfg: AdaCLIPConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        check_choices(cfg)
        clip_model, tokenizer, _ = clip_with_activation(cfg.backbone, clip_model, tokenizer, cfg.activation)
        super().__init__(cfg.backbone, clip_model, tokenizer, prompt_ensemble=cfg.prompt_ensemble)
        self.cfg = cfg
        layers = cfg.feature_layers or default_feature_layers(self.vision.depth)
        bad = [layer for layer in layers if not 1 <= layer <= self.vision.depth]
        if bad:
            raise ConfigError(f"feature_layers must lie in 1..{self.vision.depth}, got {layers}")
        self.feature_layers = list(layers)
        self.prompts = HybridPrompts(
            cfg,
            (self.text.depth, self.text.width),
            (self.vision.depth, self.vision.width),
            self.vision.output_dim,
            len(self.feature_layers),
        )
        self.vision.checkpoint_blocks = cfg.gradient_checkpointing
        self.register_buffer("class_tokens", None, persistent=False)  # [C, S, L] after set_classes
        self.n_normal = len(self.prompt_ensemble.normal_states) * len(self.prompt_ensemble.templates)

    # --- texts ------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """fp16 autocast where the authors' ``torch.cuda.amp.autocast()`` is active: on CUDA only."""
        if self.cfg.fp16_autocast and self.vision.pos_embed.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def set_classes(self, words: Sequence[str]) -> None:
        """Tokenise each category's sentences; without language prompts the texts are fixed and encoded once."""
        words = [word.replace("-", " ") for word in words]  # their TextEmbebddingLayer.encode_text
        sentences = []
        for word in words:
            normal, abnormal = self.prompt_ensemble.sentences(word)
            sentences.append(normal + abnormal)
        device = self.text.token_embedding.weight.device
        ids = trim_after_end_token(self.tokenizer([s for group in sentences for s in group]), self.text)
        self.class_tokens = ids.view(len(words), len(sentences[0]), -1).to(device)
        if not self.prompts.text:
            with self.autocast():  # their fixed TextEmbebddingLayer runs inside the autocast forward
                texts = encode_prompt_ensemble(self.text, self.tokenizer, self.prompt_ensemble, words)
            self.class_text = F.normalize(texts, dim=-1)  # their extra F.normalize of the stacked texts

    def texts(self, category_ids: torch.Tensor, dynamic: torch.Tensor | None) -> torch.Tensor:
        """``[B, 2, D]`` texts of each image: per sentence normalised, averaged per state, normalised, and
        normalised once more (their ``F.normalize`` of the stacked texts)."""
        if self.class_tokens is None:
            raise RuntimeError("call set_classes(words) with the categories' object words first")
        if not self.prompts.text:
            return self.class_text_for(category_ids)
        if dynamic is None:  # static prompts only: the texts depend on the category alone
            unique, inverse = torch.unique(category_ids, return_inverse=True)
            return self._encode_texts(unique.to(self.class_tokens.device), None)[inverse]
        return self._encode_texts(category_ids.to(self.class_tokens.device), dynamic)

    def _encode_texts(self, category_ids: torch.Tensor, dynamic: torch.Tensor | None) -> torch.Tensor:
        ids = self.class_tokens[category_ids]  # [B, S, L]
        batch, per_image, length = ids.shape
        ids = ids.reshape(batch * per_image, length)
        deep = []
        prompts = self.prompts
        for context in prompts.contexts(prompts.text_static, dynamic, prompts.text_blocks, batch):
            # one copy per sentence, rounded per copy as their `.permute(1, 0, 2).half()` on [n, len, C]
            copies = (
                context[:, None].expand(-1, per_image, -1, -1).reshape(batch * per_image, *context.shape[1:])
            )
            deep.append(copies.half() if self.cfg.round_prompts_fp16 else copies)
        features = self.text(self.text.embed(ids), ids, deep_tokens=deep, deep_first_block=2)
        # their in-place `/= norm` (float16 stored under autocast), then F.normalize of the stacked texts
        features = normalized_as_stored(features).view(batch, per_image, -1)
        states = [features[:, : self.n_normal].mean(dim=1), features[:, self.n_normal :].mean(dim=1)]
        return F.normalize(normalized_as_stored(torch.stack(states, dim=1)), dim=-1)

    # --- images -----------------------------------------------------------------------------------
    @torch.no_grad()
    def frozen_image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding ``ln_post(cls) @ proj`` (not normalised): the dynamic prompts' input."""
        return self.vision.project(self.vision(images).class_token)

    def forward(
        self, images: torch.Tensor, category_ids: torch.Tensor, hsf_seeds: Sequence[int] | None = None
    ) -> AdaCLIPOutput:
        with self.autocast():
            return self._forward(images, category_ids, hsf_seeds)

    def _forward(
        self, images: torch.Tensor, category_ids: torch.Tensor, hsf_seeds: Sequence[int] | None
    ) -> AdaCLIPOutput:
        prompts, batch = self.prompts, images.shape[0]
        dynamic_visual = dynamic_text = None
        if prompts.dynamic_visual is not None or prompts.dynamic_text is not None:
            embedding = self.frozen_image_embedding(images)
            dynamic_visual = prompts.generate(prompts.dynamic_visual, embedding)
            dynamic_text = prompts.generate(prompts.dynamic_text, embedding)
        deep = []
        if prompts.visual:
            deep = prompts.contexts(prompts.visual_static, dynamic_visual, prompts.vision_blocks, batch)
            deep = [c.half() if self.cfg.round_prompts_fp16 else c for c in deep]
        with contextlib.nullcontext() if prompts.visual else torch.no_grad():
            features = self.vision(images, layers=self.feature_layers, deep_prompts=deep)
            pooled = self.vision.project(features.class_token)
        with contextlib.nullcontext() if prompts.text else torch.no_grad():
            text = self.texts(category_ids, dynamic_text)  # [B, 2, D]
        text = text.transpose(1, 2)  # [B, D, 2] as theirs
        patches = [
            normalized_as_stored(head(features.tokens[layer][:, 1:]))
            for layer, head in zip(self.feature_layers, prompts.patch_heads, strict=True)
        ]
        class_feature = image_feature = normalized_as_stored(prompts.cls_head(pooled))
        scale = 1.0 / self.cfg.temperature
        logits = [(scale * p) @ text for p in patches]  # their (100 * patch) @ text
        fused = None
        if self.cfg.use_hsf:
            if hsf_seeds is None or len(hsf_seeds) != batch:
                raise ValueError("HSF needs one k-means seed per image (hsf_seeds)")
            fused = hybrid_semantic_fusion(
                patches, logits, self.cfg.k_clusters, self.cfg.hsf_tokens_per_cluster, hsf_seeds
            )
            alpha = self.cfg.hsf_alpha
            image_feature = F.normalize(alpha * fused + (1 - alpha) * image_feature, dim=1)
        image_probs = (scale * image_feature[:, None] @ text)[:, 0].softmax(dim=1)
        return AdaCLIPOutput(image_probs, logits, features.grid, text, patches, class_feature, fused)

    # --- training and test ------------------------------------------------------------------------
    def loss(
        self,
        output: AdaCLIPOutput,
        labels: torch.Tensor,
        masks: torch.Tensor,
        has_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Their train_one_batch: focal(image probabilities, label) + per layer focal(p, gt) + Dice(p_a, gt)
        + Dice(p_n, 1 - gt), computed outside autocast (in float32 on the CPU). Images without ground truth
        (``has_mask`` false) count with their all-zero masks, or not at all (``maskless_pixel_loss``)."""
        gt = (masks > 0.5).float()
        gamma = self.cfg.focal_gamma
        image_loss = focal_loss(
            output.image_probs[..., None, None], (labels > 0.5).long()[:, None, None], gamma
        )
        pixel_loss = masks.new_zeros((), dtype=torch.float32)
        keep = None
        if self.cfg.maskless_pixel_loss == "skip" and has_mask is not None and not bool(has_mask.all()):
            keep = has_mask.to(masks.device)
            if not bool(keep.any()):
                return {"loss": image_loss, "image_loss": image_loss, "pixel_loss": pixel_loss}
        with self.autocast():  # their per-layer maps are made inside the autocast forward
            layer_probs = output.layer_probs(tuple(masks.shape[-2:]))
        if keep is not None:
            gt, layer_probs = gt[keep], [probs[keep] for probs in layer_probs]
        for probs in layer_probs:
            pixel_loss = (
                pixel_loss
                + focal_loss(probs, gt, gamma=gamma)
                + self._dice(probs[:, ABNORMAL], gt)
                + self._dice(probs[:, NORMAL], 1 - gt)
            )
        return {"loss": image_loss + pixel_loss, "image_loss": image_loss, "pixel_loss": pixel_loss}

    def _dice(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.dice_unit == "row":  # [B, H, W] -> B * H rows, as their [H, W] ground truth at batch 1
            return dice_loss(pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1]))
        return dice_loss(pred, target)

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        category_ids: torch.Tensor,
        size: tuple[int, int],
        hsf_seeds: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], maps [B, H, W])``: the maps smoothed with scipy's ``gaussian_filter(sigma)``."""
        return self.test_outputs(self(images, category_ids, hsf_seeds), size)

    def test_outputs(self, output: AdaCLIPOutput, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Their evaluation: the anomalous image probability and the smoothed test map."""
        with self.autocast():
            maps = output.anomaly_map(size)
        return output.image_scores.float(), gaussian_blur(maps.float(), self.cfg.gaussian_sigma)
