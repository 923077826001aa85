"""VCP-CLIP (Qu et al., ECCV 2024) as plain torch on a frozen CLIP: visual context prompting.

- **Pre-VCP** (:class:`PreVCP`): the global image embedding, through ``Conv1d(1, r, 3)``, plus ``r`` learnable
  category vectors replace the class word of "a photo of a good/damaged <class>": every image gets its own
  prompts. Deep text prompts (:class:`DeepTextPrompts`, VPT-deep) run through the text tower with them.
- **Post-VCP** (:class:`PostVCP`): the two text embeddings attend (8 heads, no scaling) over an image's
  L2-normalised raw patch tokens of a layer, which turns them into that image's and layer's text embeddings
  in the vision width.
- Maps per layer: the pre-VCP map compares linearly projected patch tokens with the pre-VCP texts, the
  post-VCP map the raw patch tokens with the post-VCP texts; each is ``exp(tau) * cos``, upsampled bilinearly
  (``align_corners=True``), softmaxed per pixel. Loss: focal + Dice of every layer's maps of both kinds.
- Test: pixel map ``0.2 * mean_layers(pre) + 0.8 * mean_layers(post)``, Gaussian sigma 8; image score the
  mean of the 2000 largest pixels of each unsmoothed mean map, summed.

As the authors' code runs it (docs/methods.md#vcp-clip): exact GELU in both towers, the position embedding
resized bicubically with antialiasing, fp16 autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.augment import ALBUMENTATIONS
from datamodules.errors import ConfigError, require_choices
from lightning_modules.clip.factory import clip_with_activation
from lightning_modules.clip.text import PromptTextEncoder
from lightning_modules.clip.vision import DualPathVisionEncoder
from lightning_modules.losses import dice_loss, focal_loss
from lightning_modules.ops import gaussian_blur, l2_normalize
from lightning_modules.vcp_clip.config import VCP_ACTIVATIONS, VCP_AUGMENTATIONS, VCPCLIPConfig

ABNORMAL = 1


class DeepTextPrompts(nn.Module):
    """VPT-deep prompts of the text tower (their ``CLIP._init_prompt``): ``n`` tokens for block 1 and for
    each later block, each through one shared ``Linear`` and ``Dropout``, and the ``LayerNorm`` applied before
    ``ln_final``. Initialisation as theirs: tokens ``U(-1, 1)``, the Linear's weight Kaiming-normal (fan out),
    its weight and bias rounded to float16 values (their CLIP is built in float16, then cast back)."""

    def __init__(self, width: int, length: int, blocks: int, dropout: float) -> None:
        super().__init__()
        self.shallow = nn.Parameter(torch.empty(1, length, width).uniform_(-1.0, 1.0))
        self.deep = nn.Parameter(torch.empty(blocks - 1, length, width).uniform_(-1.0, 1.0))
        self.proj = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")
        with torch.no_grad():  # their build_model's convert_weights rounds every Linear through float16
            self.proj.weight.copy_(self.proj.weight.half().float())
            self.proj.bias.copy_(self.proj.bias.half().float())
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def forward(self, count: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(inserted [count, n, width], one [count, n, width] per later block)``; each sequence draws its
        own dropout, as the authors' per-image, per-template calls do."""
        inserted = self.dropout(self.proj(self.shallow).expand(count, -1, -1))
        deep = [self.dropout(self.proj(tokens).expand(count, -1, -1)) for tokens in self.deep]
        return inserted, deep


class PreVCP(nn.Module):
    """The image-conditioned class tokens (their ``Context_Prompting``): ``query + Conv1d(global)``."""

    def __init__(self, width: int, length: int, use_global: bool) -> None:
        super().__init__()
        self.query = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, length, width)))
        self.conv = nn.Conv1d(1, length, 3, stride=1, padding="same")
        self.use_global = use_global

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` global image embeddings (not normalised) -> class tokens ``[B, r, width]``."""
        query = self.query.expand(image_embedding.shape[0], -1, -1)
        if not self.use_global:
            return query
        return query + self.conv(image_embedding[:, None])


class PostVCP(nn.Module):
    """Text embeddings attending over an image's patch tokens (their ``Zero_Parameter``): queries from the
    texts, keys and values from the tokens, ``heads`` heads without the ``1/sqrt(d)`` scale (their
    ``beta_t = 1``), an output projection and L2 normalisation. Their 1x1 ``Conv1d`` are these ``Linear``."""

    def __init__(self, text_width: int, vision_width: int, heads: int) -> None:
        super().__init__()
        if vision_width % heads:
            raise ConfigError(f"post_vcp_heads {heads} does not divide the vision width {vision_width}")
        self.heads = heads
        self.query = nn.Linear(text_width, vision_width)
        self.key = nn.Linear(vision_width, vision_width)
        self.value = nn.Linear(vision_width, vision_width)
        self.out = nn.Linear(vision_width, vision_width)

    def forward(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``text [B, C, text_width]``, ``tokens [B, N, vision_width]`` -> ``[B, C, vision_width]``, normalised."""
        b, c, _ = text.shape
        n = tokens.shape[1]
        q = self.query(text).view(b, c, self.heads, -1).transpose(1, 2)
        k = self.key(tokens).view(b, n, self.heads, -1).transpose(1, 2)
        v = self.value(tokens).view(b, n, self.heads, -1).transpose(1, 2)
        attended = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        out = self.out(attended.transpose(1, 2).reshape(b, c, -1))
        return out / out.norm(dim=-1, keepdim=True)


@dataclasses.dataclass
class VCPCLIPOutput:
    pre_probs: list[torch.Tensor]  # per layer [B, 2, H, W] (normal, anomalous), pre-VCP texts
    post_probs: list[torch.Tensor]  # per layer [B, 2, H, W], post-VCP texts

    def pre_map(self) -> torch.Tensor:
        return torch.stack([p[:, ABNORMAL] for p in self.pre_probs]).mean(0)

    def post_map(self) -> torch.Tensor:
        return torch.stack([p[:, ABNORMAL] for p in self.post_probs]).mean(0)


def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest pixels of each ``[B, H, W]`` map (their ``np.partition(..., -k)[:, -k:]``)."""
    flat = maps.reshape(maps.shape[0], -1)
    if k > flat.shape[1]:
        raise ConfigError(
            f"image_score_top_k {k} exceeds the {flat.shape[1]} pixels of a map; lower method.image_score_top_k"
        )
    return flat.topk(k, dim=1).values.mean(dim=1)


def check_choices(cfg: VCPCLIPConfig) -> None:
    require_choices(
        ("activation", cfg.activation, VCP_ACTIVATIONS),
        ("augmentation", cfg.augmentation, VCP_AUGMENTATIONS),
        ("albumentations", cfg.albumentations, ALBUMENTATIONS),
    )
    if not cfg.normal_templates or not cfg.abnormal_templates:
        raise ConfigError(
            "method.normal_templates and method.abnormal_templates need one template each at least"
        )


class VCPCLIP(nn.Module):
    def __init__(self, cfg: VCPCLIPConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__()
        check_choices(cfg)
        # a model handed in may be shared (tests): copied rather than changed when the activation differs
        clip_model, tokenizer, _ = clip_with_activation(cfg.backbone, clip_model, tokenizer, cfg.activation)
        clip_model.eval().requires_grad_(False)
        self.cfg = cfg
        self.clip = clip_model
        self.vision = DualPathVisionEncoder(
            clip_model.visual,
            image_size=cfg.backbone.image_size,
            pos_embed_interpolation=cfg.backbone.pos_embed_interpolation,
        )
        self.text = PromptTextEncoder(clip_model)
        bad = [layer for layer in cfg.feature_layers if not 1 <= layer <= self.vision.depth]
        if bad or not cfg.feature_layers:
            raise ConfigError(
                f"feature_layers must be non-empty and lie in 1..{self.vision.depth}, got {cfg.feature_layers}"
            )
        text_width, embed_dim = self.text.width, self.vision.output_dim
        if text_width != embed_dim:  # their Context_Prompting asserts it: the class tokens are text tokens
            raise ConfigError(
                f"VCP-CLIP needs the text width ({text_width}) to equal the embedding size ({embed_dim})"
            )
        self._set_templates(tokenizer)
        self.deep_prompts = DeepTextPrompts(
            text_width, cfg.deep_prompt_length, self.text.depth, cfg.prompt_dropout
        )
        self.pre_vcp = PreVCP(text_width, cfg.prompt_length, cfg.use_global)
        self.post_vcp = PostVCP(text_width, self.vision.width, cfg.post_vcp_heads)
        self.heads = nn.ModuleList(nn.Linear(self.vision.width, embed_dim) for _ in cfg.feature_layers)
        log_scale = math.log(1.0 / cfg.temperature_init)
        self.pre_log_scale = nn.Parameter(torch.tensor(log_scale))  # their prompt_temp (tau_1)
        self.post_log_scale = nn.Parameter(torch.tensor(log_scale))  # their prompt_temp_l1 (tau_2)

    def _set_templates(self, tokenizer) -> None:
        """Token embeddings ``[T, L, w]`` of the templates without their class slot (start token, words, end
        token, padding); the class tokens are inserted at ``class_positions`` (where the end token is), as
        their ``encode_text`` replaces ``<|class|>`` and drops the sequence's last positions."""
        templates = [*self.cfg.normal_templates, *self.cfg.abnormal_templates]
        token_ids = tokenizer(templates)
        length, r = token_ids.shape[1], self.cfg.prompt_length
        eot = token_ids.argmax(dim=-1)  # the word tokens end here; the class slot is inserted before it
        if int(eot.max()) + r >= length:
            raise ConfigError(f"a template is too long for {r} class tokens in {length} positions")
        with torch.no_grad():
            embeddings = self.text.embed(token_ids)
        self.register_buffer("template_embeddings", embeddings, persistent=False)
        self.register_buffer("class_positions", eot, persistent=False)
        self.register_buffer(
            "template_state",
            torch.tensor([0] * len(self.cfg.normal_templates) + [1] * len(self.cfg.abnormal_templates)),
            persistent=False,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def temperature_parameters(self) -> list[nn.Parameter]:
        """tau_1 and tau_2, which the authors train with their own learning rate (0.01)."""
        return [self.pre_log_scale, self.post_log_scale]

    def train(self, mode: bool = True) -> VCPCLIP:
        """The frozen CLIP stays in eval mode; the prompts' dropout follows ``mode`` (active in training, as
        the authors' model, never set to eval before their training loop)."""
        super().train(mode)
        self.clip.eval()
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """fp16 autocast where the authors' ``torch.cuda.amp.autocast()`` is active: on CUDA only."""
        if self.cfg.fp16_autocast and self.vision.pos_embed.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # --- frozen image features (cacheable) -------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image_embedding`` [B, D] (``ln_post(cls) @ proj``, not normalised) and the raw patch tokens
        ``tokens_{layer}`` [B, N, width] of each feature layer (no class token)."""
        with self.autocast():
            features = self.vision(images, layers=self.cfg.feature_layers)
            return {"image_embedding": self.vision.project(features.class_token)} | {
                f"tokens_{layer}": features.tokens[layer][:, 1:] for layer in self.cfg.feature_layers
            }

    # --- texts -----------------------------------------------------------------------------------------
    def encode_texts(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """Each image's (normal, anomalous) text embeddings ``[B, 2, D]``: per template the class slot filled
        with the image's pre-VCP tokens, normalised, averaged per state and normalised again."""
        class_tokens = self.pre_vcp(image_embedding)  # [B, r, w]
        b, r, _ = class_tokens.shape
        templates = self.template_embeddings.to(class_tokens.dtype)
        t, length, _ = templates.shape
        sequences = []
        for j in range(t):  # template-major, image-minor
            cut = int(self.class_positions[j])
            prefix = templates[j, :cut].expand(b, -1, -1)
            suffix = templates[j, cut : length - r].expand(b, -1, -1)
            sequences.append(torch.cat([prefix, class_tokens, suffix], dim=1))
        embeddings = torch.cat(sequences)  # [T * B, L, w]
        eot = (self.class_positions + r).repeat_interleave(b)
        inserted, deep = self.deep_prompts(embeddings.shape[0])
        features = self.text(
            embeddings,
            None,
            deep,
            deep_first_block=2,
            inserted=inserted,
            eot_positions=eot,
            final_norm=self.deep_prompts.norm,
        )
        features = l2_normalize(features).view(t, b, -1)
        states = []
        for state in (0, 1):
            mean = features[self.template_state == state].mean(dim=0)
            states.append(l2_normalize(mean))
        return torch.stack(states, dim=1)

    # --- maps ------------------------------------------------------------------------------------------
    def _probabilities(
        self, tokens: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """``softmax(upsample(exp(log_scale) * tokens @ text^T))``: ``[B, 2, H, W]``."""
        logits = (log_scale.exp() * tokens) @ text.transpose(1, 2)
        b, _, c = logits.shape
        grid = logits.transpose(1, 2).reshape(b, c, self.vision.grid, self.vision.grid)
        upsampled = F.interpolate(grid, size=size, mode="bilinear", align_corners=True)
        return upsampled.softmax(dim=1)

    def forward(self, images: torch.Tensor, size: tuple[int, int]) -> VCPCLIPOutput:
        return self.scores(self.encode_images(images), size)

    def scores(self, features: dict[str, torch.Tensor], size: tuple[int, int]) -> VCPCLIPOutput:
        """The trainable part on (fresh or cached) :meth:`encode_images` features."""
        with self.autocast():
            text = self.encode_texts(features["image_embedding"])
            post, pre = [], []
            for layer in self.cfg.feature_layers:
                tokens = features[f"tokens_{layer}"]
                dense = tokens / tokens.norm(dim=-1, keepdim=True)
                post.append(self._probabilities(dense, self.post_vcp(text, dense), self.post_log_scale, size))
            for layer, head in zip(self.cfg.feature_layers, self.heads, strict=True):
                projected = head(features[f"tokens_{layer}"])
                dense = projected / projected.norm(dim=-1, keepdim=True)
                pre.append(self._probabilities(dense, text, self.pre_log_scale, size))
        return VCPCLIPOutput(pre_probs=pre, post_probs=post)

    def loss(self, output: VCPCLIPOutput, masks: torch.Tensor) -> torch.Tensor:
        """``sum_layers focal + Dice`` of the post-VCP maps plus the same of the pre-VCP maps (their order)."""
        gt = (masks > 0.5).float()
        total = masks.new_zeros((), dtype=torch.float32)
        for probs in [*output.post_probs, *output.pre_probs]:
            probs = probs.float()
            total = (
                total + focal_loss(probs, gt, gamma=self.cfg.focal_gamma) + dice_loss(probs[:, ABNORMAL], gt)
            )
        return total

    def image_scores(self, output: VCPCLIPOutput) -> torch.Tensor:
        k = self.cfg.image_score_top_k
        return top_k_mean(output.pre_map().float(), k) + top_k_mean(output.post_map().float(), k)

    def anomaly_map(self, output: VCPCLIPOutput) -> torch.Tensor:
        alpha = self.cfg.map_alpha
        combined = alpha * output.pre_map().float() + (1.0 - alpha) * output.post_map().float()
        return gaussian_blur(combined, self.cfg.gaussian_sigma)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        output = self(images, size)
        return self.image_scores(output), self.anomaly_map(output)

    def parameter_groups(self) -> Sequence[dict]:
        """Adam's two groups: everything at ``lr``, the temperatures at ``temperature_lr``."""
        temperatures = {id(p) for p in self.temperature_parameters()}
        rest = [p for p in self.trainable_parameters() if id(p) not in temperatures]
        return [
            {"params": rest, "lr": self.cfg.lr},
            {"params": self.temperature_parameters(), "lr": self.cfg.temperature_lr},
        ]
