"""Bayes-PFL (Qu et al., CVPR 2025) as plain torch on a frozen CLIP: Bayesian prompt flow learning.

- **Prompt bank**: B prompts ``[SOS] ctx(P) state(Q) <class word> [EOS]`` per class (normal, abnormal); the
  context vectors are shared by both classes, the state vectors are per class.
- **Prompt flows** (:mod:`.flows`): an image-specific distribution (posterior and planar flows amortised
  from the image embedding) whose draw is added to every context vector, and an image-agnostic one per class
  (a learned input) whose draw is added to the state vectors. Training draws once (one image-specific draw
  per image, one image-agnostic draw per class and batch); testing draws R times and averages.
- **Scores**: image logits ``exp(t_img) cos(class_mapping(text), image)``; per layer, the residual
  cross-modal attention (:class:`ResidualCrossAttention`) moves each text towards the image's projected patch
  tokens, and the map logits are ``exp(t_pix) cos(patch, text)``, upsampled bilinearly
  (``align_corners=True``) and softmaxed per (normal, abnormal) pair.
- **Loss** (stage 1): for one prompt of the bank drawn per batch, CE of the image logits + per layer their
  focal (foreground and background averaged apart) + foreground Dice, + 0.01 x KL of the three
  distributions + the orthogonality of each class's prompts. Stage 2: CE only, with the patch tokens fused
  into the image embedding (``image_mapping(image + fuse(patches))``).

As the authors' code runs it (docs/methods.md#bayes-pfl): exact GELU in both towers, the position embedding
resized bicubically with antialiasing, the raw (pre-``ln_post``) patch tokens of blocks 6/12/18/24.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.bayes_pfl.config import BAYES_PFL_ACTIVATIONS, BayesPFLConfig
from lightning_modules.bayes_pfl.flows import GaussianPosterior, ImageAgnosticFlow, ImageSpecificFlow
from lightning_modules.clip.factory import clip_with_activation
from lightning_modules.clip.text import PromptTextEncoder
from lightning_modules.clip.vision import DualPathVisionEncoder
from lightning_modules.metrics.category_scores import CategoryScoreRule
from lightning_modules.ops import gaussian_blur, l2_normalize
from lightning_modules.stochastic import keyed_generator, keyed_normal


@dataclasses.dataclass
class BayesPFLOutput:
    """Training-time scores of one prompt ``k`` of the bank (the one the batch optimises)."""

    image_logits: torch.Tensor  # [B, 2] (normal, abnormal) logits of prompt k
    map_probabilities: list[torch.Tensor]  # per layer [B, 2, H, W] softmax of prompt k's upsampled logits
    texts: torch.Tensor  # [B, 2 * bank, D] normalised texts (normal prompts, then abnormal)
    kl: torch.Tensor  # KL terms of the three distributions, summed (before the weight)


class ResidualCrossAttention(nn.Module):
    """Their ``Zero_Parameter`` (RCA): texts ``[B, T, C]`` attend over one layer's patch tokens, projected to
    the text width and L2-normalised (keys = values), with ``heads`` heads and the scale ``C ** -0.5``; the
    result plus the texts, normalised. Returns ``(texts, projected patch tokens)``."""

    def __init__(self, vision_width: int, text_width: int, layers: int, heads: int) -> None:
        super().__init__()
        if text_width % heads:
            raise ConfigError(f"rca_heads {heads} does not divide the text width {text_width}")
        self.heads = heads
        self.scale = text_width**-0.5
        self.query = nn.Conv1d(text_width, text_width, kernel_size=1)  # their q_proj_pre
        self.patch_projections = nn.ModuleList(
            nn.Linear(vision_width, text_width, bias=False) for _ in range(layers)
        )

    def forward(
        self, texts: torch.Tensor, patches: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c = texts.shape
        n = patches.shape[1]
        dense = l2_normalize(self.patch_projections[layer](patches))
        q = self.query(texts.transpose(1, 2)).transpose(1, 2).reshape(b, t, self.heads, c // self.heads)
        kv = dense.reshape(b, n, self.heads, c // self.heads)
        attn = (torch.einsum("bnkc,bmkc->bknm", q, kv) * self.scale).softmax(dim=-1)
        out = torch.einsum("bknm,bmkc->bnkc", attn, kv).reshape(b, t, c) + texts
        return l2_normalize(out), dense


class GlobalFeature(nn.Module):
    """Their ``Global_Feature`` (stage 2): the layers' raw patch tokens concatenated, projected, pooled with
    learned attention over the patches and projected to the text width."""

    def __init__(self, vision_width: int, hidden: int, text_width: int, layers: int) -> None:
        super().__init__()
        self.fuse_modules = nn.Linear(vision_width * layers, hidden)
        self.compress = nn.Linear(hidden, 1)
        self.post_process = nn.Linear(hidden, text_width)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches [B, layers, N, width]`` -> ``[B, text_width]``."""
        x = self.fuse_modules(torch.cat(patches.unbind(1), dim=-1))
        weights = self.compress(x).softmax(dim=1)
        return self.post_process(torch.sum(weights * x, dim=1))


def orthogonality_loss(texts: torch.Tensor, bank: int) -> torch.Tensor:
    """Their ``Orthogonal_Loss``: mean squared cosine between different prompts of a class, per class."""
    total = texts.new_zeros(())
    for group in (texts[:, :bank], texts[:, bank:]):
        normed = F.normalize(group, p=2, dim=-1)
        cos2 = torch.einsum("blc,bkc->blk", normed, normed) ** 2
        eye = torch.eye(group.shape[1], device=texts.device, dtype=texts.dtype)
        total = total + (cos2 * (1 - eye)).mean()
    return total


def focal_loss_balanced(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Their ``FocalLoss`` on ``[B, 2, H, W]`` probabilities: ``-(1 - p_t)^gamma log(p_t + 1e-8)`` averaged
    over the anomalous pixels and over the normal ones separately, the two averages added."""
    p_t = torch.where(target > 0, probs[:, 1], probs[:, 0])
    loss = -((1 - p_t) ** gamma) * torch.log(p_t + 1e-8)
    fg = (target > 0).to(loss.dtype)
    return (loss * fg).sum() / (fg.sum() + 1e-8) + (loss * (1 - fg)).sum() / ((1 - fg).sum() + 1e-8)


def dice_loss_foreground(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Their ``DiceLoss``: ``1 - (2 sum(p1 g) + 1e-5) / (sum p1 + sum g + 1e-5)`` over the whole batch."""
    p = probs[:, 1]
    target = target.to(p.dtype)
    return 1 - (2 * torch.sum(p * target) + 1e-5) / (torch.sum(p) + torch.sum(target) + 1e-5)


class BayesPFL(nn.Module):
    """Frozen CLIP plus the trainable prompt bank, flows, RCA and heads; ``predict`` for evaluation."""

    def __init__(self, cfg: BayesPFLConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__()
        if cfg.activation not in BAYES_PFL_ACTIVATIONS:
            raise ConfigError(f"activation must be one of {BAYES_PFL_ACTIVATIONS}, got {cfg.activation!r}")
        self.cfg = cfg
        # a model handed in is the caller's: changed on a copy
        clip_model, tokenizer, _ = clip_with_activation(cfg.backbone, clip_model, tokenizer, cfg.activation)
        clip_model.eval().requires_grad_(False)
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.vision = DualPathVisionEncoder(
            clip_model.visual,
            cfg.backbone.image_size,
            pos_embed_interpolation=cfg.backbone.pos_embed_interpolation,
        )
        self.text = PromptTextEncoder(clip_model)
        self.text.checkpoint_blocks = cfg.checkpoint_text_blocks
        layers = list(cfg.feature_layers)
        if not layers or min(layers) < 1 or max(layers) > self.vision.depth:
            raise ConfigError(f"feature_layers {layers} must lie in 1..{self.vision.depth}")
        vision_width, text_width, embed = self.vision.width, self.text.width, self.vision.output_dim
        if embed != text_width:
            raise ConfigError(
                f"Bayes-PFL needs the embedding size ({embed}) to equal the text width ({text_width}), as the "
                "authors' class_mapping and fuse assume"
            )
        bank, n_ctx, n_state = cfg.prompt_bank_size, cfg.context_length, cfg.state_length
        if bank < 2:
            raise ConfigError("prompt_bank_size must be at least 2 (the orthogonality loss compares prompts)")
        self.prompt_context = nn.Parameter(torch.empty(bank, n_ctx, text_width))
        self.prompt_state_normal = nn.Parameter(torch.empty(bank, n_state, text_width))
        self.prompt_state_abnormal = nn.Parameter(torch.empty(bank, n_state, text_width))
        self.temperature_pixel = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature_init)))
        self.temperature_image = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature_init)))
        hidden = vision_width // 2
        self.context_flow = ImageSpecificFlow(embed, hidden, cfg.num_flows)
        self.state_posterior = GaussianPosterior(embed, hidden)  # shared by both classes, as theirs
        self.normal_flow = ImageAgnosticFlow(self.state_posterior, embed, cfg.num_flows)
        self.abnormal_flow = ImageAgnosticFlow(self.state_posterior, embed, cfg.num_flows)
        self.fuse = GlobalFeature(vision_width, hidden, text_width, len(layers))
        self.rca = ResidualCrossAttention(vision_width, text_width, len(layers), cfg.rca_heads)
        self.class_mapping = nn.Linear(text_width, text_width)
        self.image_mapping = nn.Linear(text_width, text_width)
        self._initialize()
        self._token_cache: dict[str, torch.Tensor] = {}

    def _initialize(self) -> None:
        """Their ``_initialize_weights`` (every Linear N(0, 0.02), biases 0; the Conv1d keeps torch's
        default) and the prompts' truncated normals."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and not any(module is m for m in self.clip.modules()):
                module.weight.data.normal_(mean=0.0, std=0.02)
                if module.bias is not None:
                    module.bias.data.zero_()
        nn.init.trunc_normal_(self.prompt_context, mean=0, std=0.02)
        nn.init.trunc_normal_(self.prompt_state_normal, mean=self.cfg.normal_state_mean, std=0.02)
        nn.init.trunc_normal_(self.prompt_state_abnormal, mean=self.cfg.abnormal_state_mean, std=0.02)

    def train(self, mode: bool = True) -> BayesPFL:
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def bank(self) -> int:
        return self.cfg.prompt_bank_size

    @property
    def dim(self) -> int:
        return self.vision.output_dim

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- images ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` ``[B, D]`` (``ln_post(cls) @ proj``, not normalised) and ``patches`` ``[B, layers, N,
        width]``: the raw tokens of the feature layers without the class token (their ``encode_image``)."""
        layers = list(self.cfg.feature_layers)
        features = self.vision(images, layers=layers)
        patches = torch.stack([features.tokens[i][:, 1:] for i in layers], dim=1)
        return {"image": self.vision.project(features.class_token).float(), "patches": patches.float()}

    # --- texts ----------------------------------------------------------------------------------------
    def _template_tokens(self, word: str, device: torch.device) -> torch.Tensor:
        """Token ids of "X <word>" with the "X" replaced by ``P + Q`` placeholders (their slicing: the
        sequence keeps its length, its tail is cut)."""
        if word not in self._token_cache:
            ids = self.tokenizer(["X " + word.lower()])[0]
            n = self.cfg.context_length + self.cfg.state_length
            length = ids.shape[0]
            self._token_cache[word] = torch.cat([ids[:1], ids.new_zeros(n), ids[2 : length - n + 1]])
        return self._token_cache[word].to(device)

    def encode_texts(
        self,
        words: Sequence[str],
        context_draws: torch.Tensor,
        normal_draws: torch.Tensor,
        abnormal_draws: torch.Tensor,
    ) -> torch.Tensor:
        """Normalised texts ``[B, 2 * S * bank, D]``: for image b, class c (normal, then abnormal), draw s and
        prompt p (in that order) ``[SOS] ctx_p + z_bs, state_cp + z_cs, word_b [EOS]``.

        ``context_draws [B, S, D]`` (image-specific), ``normal_draws`` / ``abnormal_draws`` ``[S, D]``."""
        b, s, _ = context_draws.shape
        device = context_draws.device
        ids = torch.stack([self._template_tokens(w, device) for w in words])  # [B, L]
        context = self.prompt_context[None, None] + context_draws[:, :, None, None]  # [B, S, P, n_ctx, W]
        sequences = []
        for states, draws in (
            (self.prompt_state_normal, normal_draws),
            (self.prompt_state_abnormal, abnormal_draws),
        ):
            state = (states[None] + draws[:, None, None]).expand(b, -1, -1, -1, -1)  # [B, S, P, n_state, W]
            sequences.append(torch.cat([context, state], dim=3))
        learned = torch.stack(sequences, dim=1).flatten(0, 3)  # [B * 2 * S * P, n, W]
        count = learned.shape[0] // b
        token_ids = ids.repeat_interleave(count, dim=0)
        embeddings = self.text.embed(token_ids)
        n = learned.shape[1]
        embeddings = torch.cat(
            [embeddings[:, :1], learned.to(embeddings.dtype), embeddings[:, 1 + n :]], dim=1
        )
        texts = self.text(embeddings, token_ids)
        return l2_normalize(texts.float()).view(b, count, -1)

    # --- distributions --------------------------------------------------------------------------------
    def sample_prompts(
        self,
        image: torch.Tensor,
        context_eps: torch.Tensor,
        normal_eps: torch.Tensor,
        abnormal_eps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draws ``z_K`` of the three distributions from standard normal ``eps`` (``[B, S, D]``, ``[S, D]``,
        ``[S, D]``) and, for one draw (training), the sum of their KL terms (else 0)."""
        z_context, kl_context = self.context_flow(image, context_eps)
        z_normal, kl_normal = self.normal_flow(normal_eps, image.shape[0])
        z_abnormal, kl_abnormal = self.abnormal_flow(abnormal_eps, image.shape[0])
        if kl_context is None:
            return z_context, z_normal, z_abnormal, image.new_zeros(())
        return z_context, z_normal, z_abnormal, kl_context + kl_normal + kl_abnormal

    def training_draws(
        self, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One draw per distribution from the global RNG (seeded per step by the runner), in the authors'
        order: the image-specific ``[B, D]``, then the normal and abnormal ``[1, D]``."""
        context = torch.randn(batch, 1, self.dim, device=device)
        return context, torch.randn(1, self.dim, device=device), torch.randn(1, self.dim, device=device)

    def test_draws(
        self, seed: int, dataset: str, keys: Sequence[tuple[str, ...]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``test_samples`` draws per distribution: each image's image-specific ``[R, D]`` from the
        generator of its key, the normal then abnormal image-agnostic ``[R, D]`` from the dataset's (one
        draw shared by every image of the target, as their test.py keeps the first image's)."""
        shape = (self.cfg.test_samples, self.dim)
        context = keyed_normal(seed, keys, shape, device)
        agnostic = keyed_generator(seed, dataset, "image-agnostic")
        normal, abnormal = (torch.randn(shape, generator=agnostic).to(device) for _ in range(2))
        return context, normal, abnormal

    # --- scores ---------------------------------------------------------------------------------------
    def image_logits(
        self, texts: torch.Tensor, features: dict[str, torch.Tensor], stage: int
    ) -> torch.Tensor:
        """``[B, T]`` image logits of every text; stage 2 fuses the patch tokens into the image embedding."""
        text = l2_normalize(self.class_mapping(texts))
        image = features["image"]
        if stage == 2:
            image = self.image_mapping(image + self.fuse(features["patches"]))
        image = l2_normalize(image)
        return self.temperature_image.exp() * (text @ image[:, :, None])[..., 0]

    def map_logits(self, texts: torch.Tensor, patches: torch.Tensor, layer: int) -> torch.Tensor:
        """``[B, T, h, w]`` logits of one layer on the patch grid."""
        updated, dense = self.rca(texts, patches[:, layer], layer)
        logits = self.temperature_pixel.exp() * dense @ updated.transpose(1, 2)
        b, n, t = logits.shape
        side = int(math.isqrt(n))
        return logits.transpose(1, 2).reshape(b, t, side, side)

    def scores(
        self,
        features: dict[str, torch.Tensor],
        words: Sequence[str],
        size: tuple[int, int],
        prompt: int,
        stage: int = 1,
    ) -> BayesPFLOutput:
        """Training forward with one draw of every distribution from the global RNG (their order: the
        image-specific draw ``[B, D]``, then the normal and abnormal ``[1, D]``) for prompt ``prompt``."""
        image = features["image"]
        b = image.shape[0]
        context_eps = torch.randn(b, 1, self.dim, device=image.device)
        normal_eps = torch.randn(1, self.dim, device=image.device)
        abnormal_eps = torch.randn(1, self.dim, device=image.device)
        return self.scores_from_draws(
            features, words, size, prompt, stage, (context_eps, normal_eps, abnormal_eps)
        )

    def scores_from_draws(
        self,
        features: dict[str, torch.Tensor],
        words: Sequence[str],
        size: tuple[int, int],
        prompt: int,
        stage: int,
        eps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> BayesPFLOutput:
        z_context, z_normal, z_abnormal, kl = self.sample_prompts(features["image"], *eps)
        texts = self.encode_texts(words, z_context, z_normal, z_abnormal)  # [B, 2P, D]
        pair = [prompt, prompt + self.bank]
        image_logits = self.image_logits(texts, features, stage)[:, pair]
        maps = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage == 1):
            for layer in range(len(self.cfg.feature_layers)):
                logits = self.map_logits(texts, features["patches"], layer)[:, pair]
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
                maps.append(logits.softmax(dim=1))
        return BayesPFLOutput(image_logits=image_logits, map_probabilities=maps, texts=texts, kl=kl)

    def loss(
        self, output: BayesPFLOutput, labels: torch.Tensor, masks: torch.Tensor, stage: int = 1
    ) -> dict[str, torch.Tensor]:
        """Their stage-1 loss ``CE + sum_layers(focal + Dice) + 0.01 KL + orthogonality`` (stage 2: CE)."""
        ce = F.cross_entropy(output.image_logits, labels.long())
        if stage == 2:
            return {"loss": ce, "class": ce}
        target = (masks > 0.5).long()
        seg = sum(
            focal_loss_balanced(p, target, self.cfg.focal_gamma) + dice_loss_foreground(p, target)
            for p in output.map_probabilities
        )
        kl = self.cfg.kl_weight * output.kl
        ortho = orthogonality_loss(output.texts, self.bank)
        return {
            "loss": ce + seg + kl + ortho,
            "class": ce,
            "segmentation": seg,
            "kl": kl,
            "orthogonal": ortho,
        }

    @torch.no_grad()
    def predict_from_draws(
        self,
        features: dict[str, torch.Tensor],
        words: Sequence[str],
        size: tuple[int, int],
        eps: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        stage: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean anomaly probability of the R x bank image pairs [B], unsmoothed map [B, H, W])``: the mean
        over layers and pairs of each pair's pixel softmax (their test.py)."""
        z_context, z_normal, z_abnormal, _ = self.sample_prompts(features["image"], *eps)
        texts = self.encode_texts(words, z_context, z_normal, z_abnormal)  # [B, 2 R P, D]
        half = texts.shape[1] // 2
        logits = self.image_logits(texts, features, stage)
        probability = torch.stack([logits[:, :half], logits[:, half:]], dim=-1).softmax(-1)[..., 1].mean(1)
        total = None
        for layer in range(len(self.cfg.feature_layers)):
            # softmax over a (normal, abnormal) pair = sigmoid(abnormal - normal), and the bilinear upsampling
            # is linear: the difference is upsampled (half the work and memory; their order to ~1e-7)
            logits = self.map_logits(texts, features["patches"], layer)
            difference = logits[:, half:] - logits[:, :half]
            up = F.interpolate(difference, size=size, mode="bilinear", align_corners=True)
            layer_sum = torch.sigmoid(up).sum(1)
            total = layer_sum if total is None else total + layer_sum
        return probability, total / (len(self.cfg.feature_layers) * half)

    def image_score_components(
        self, probability: torch.Tensor, raw_map: torch.Tensor, top_k: Sequence[int]
    ) -> torch.Tensor:
        """``[B, 2]``: the mean anomaly probability and the mean of each image's ``top_k`` largest pixels of
        its unsmoothed map; combined per category by :func:`combine_image_scores`."""
        flat = raw_map.flatten(1)
        top = torch.stack(
            [flat[i].topk(min(int(k), flat.shape[1])).values.mean() for i, k in enumerate(top_k)]
        )
        return torch.stack([probability.double(), top.double()], dim=1)

    def smooth(self, raw_map: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(raw_map, self.cfg.gaussian_sigma)


def combine_image_scores(components: torch.Tensor, alpha: float) -> torch.Tensor:
    """Their per-category rule: ``alpha * minmax(probability) + (1 - alpha) * minmax(top-k mean)`` with
    ``minmax(x) = (x - min) / (max - min + 1e-8)`` over the category's images."""
    components = components.double()
    low = components.min(dim=0).values
    high = components.max(dim=0).values
    normalised = (components - low) / (high - low + 1e-8)
    return alpha * normalised[:, 0] + (1 - alpha) * normalised[:, 1]


def image_score_rule(alpha: float) -> CategoryScoreRule:
    """The evaluator's rule for Bayes-PFL's image score (parts: probability, top-k mean): the category's
    min-max mix; one image alone (pictures, ``zsad predict``) gets the unnormalised ``alpha`` mix."""
    return CategoryScoreRule(
        name="bayes_pfl",
        parts=2,
        combine=lambda parts: combine_image_scores(parts, alpha),
        per_image=lambda parts: alpha * parts[:, 0] + (1 - alpha) * parts[:, 1],
    )
