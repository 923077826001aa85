"""FAPrompt as a plain torch model: compound abnormality prompts and a data-dependent abnormality prior on
AnomalyCLIP's frozen CLIP (:class:`AnomalyCLIPBase`: DPAM image features, deep text tokens, loss terms).

- **Compound abnormality prompts** (CAP): one normal prompt ``[N1..N5] object.`` and ten abnormality prompts
  ``[N1..N5][A1 A2]_j damaged object.`` that share the normal vectors; the abnormal text is the mean of the
  ten prompts' text features; a decorrelation loss keeps the ten apart.
- **Abnormality prior** (DAP): ten patch embeddings of the image, concatenated, go through a small meta-net
  whose output is added to every abnormal vector ``A`` of the image's prompts.

Every image is scored twice, with the static prompts (no prior) and with its own prompts (with the prior):
``map = (S1_a + 1 - S1_n + S2_a + 1 - S2_n) / 4`` and ``score = (p_image + (2 max S1_a + max S2_a) / 3) / 2``
with ``p_image`` the abnormal softmax of the class embedding against the image's own texts (test.py).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.anomalyclip.model import (
    ABNORMAL,
    NORMAL,
    AnomalyCLIPBase,
    ImageFeatures,
    segmentation_losses,
)
from lightning_modules.clip import PromptTextEncoder
from lightning_modules.faprompt.config import PRIOR_SELECTIONS, FAPromptConfig
from lightning_modules.losses import binary_focal_loss_with_logits
from lightning_modules.ops import class_logits, gaussian_blur, l2_normalize, upsample_patch_probabilities


class CompoundAbnormalityPrompts(nn.Module):
    """The authors' ``FAPrompt`` prompt learner: normal and abnormal context vectors, deep text tokens and
    the prior's meta-net (``Linear(k D, k D / 16) -> ReLU -> Linear(k D / 16, width)``, PyTorch's default
    initialisation; the vectors and deep tokens ``N(0, 0.02)``)."""

    def __init__(
        self,
        text_encoder: PromptTextEncoder,
        tokenizer,
        embed_dim: int,
        cfg: FAPromptConfig,
    ) -> None:
        super().__init__()
        width = text_encoder.width
        normal = " ".join(["N"] * cfg.normal_prompt_length)
        abnormal = " ".join(["A"] * cfg.abnormal_prompt_length)
        token_ids = tokenizer([f"{normal} object.", f"{normal} {abnormal} damaged object."])
        with torch.no_grad():
            embeddings = text_encoder.embed(token_ids)
        start = 1 + cfg.normal_prompt_length
        self.register_buffer("token_ids", token_ids, persistent=False)  # [2, L]: normal, abnormal
        self.register_buffer("prefix", embeddings[:, :1].clone(), persistent=False)  # start token
        self.register_buffer("normal_suffix", embeddings[0, start:].clone(), persistent=False)
        self.register_buffer(
            "abnormal_suffix", embeddings[1, start + cfg.abnormal_prompt_length :].clone(), persistent=False
        )
        self.num_abnormal = cfg.num_abnormal_prompts
        prior_width = embed_dim * cfg.prior_tokens
        self.meta_net = nn.Sequential(
            OrderedDict(
                linear1=nn.Linear(prior_width, prior_width // cfg.prior_reduction),
                relu=nn.ReLU(inplace=True),
                linear2=nn.Linear(prior_width // cfg.prior_reduction, width),
            )
        )
        self.normal_context = nn.Parameter(torch.empty(cfg.normal_prompt_length, width).normal_(std=0.02))
        self.abnormal_context = nn.Parameter(
            torch.empty(cfg.num_abnormal_prompts, cfg.abnormal_prompt_length, width).normal_(std=0.02)
        )
        self.deep_tokens = nn.ParameterList(
            nn.Parameter(torch.empty(cfg.deep_prompt_length, width).normal_(std=0.02))
            for _ in cfg.deep_prompt_blocks
        )

    def normal(self) -> torch.Tensor:
        """The normal prompt's embeddings ``[1, L, width]``."""
        context = self.normal_context.to(self.prefix.dtype)
        return torch.cat([self.prefix[0], context, self.normal_suffix])[None]

    def abnormal(self, prior: torch.Tensor | None = None) -> torch.Tensor:
        """The abnormality prompts' embeddings ``[n, num_abnormal, L, width]``: one set (``prior=None``) or one
        per row of ``prior`` ``[n, width]``, added to every abnormal vector of that image's prompts."""
        context = self.abnormal_context[None]
        if prior is not None:
            context = context + prior[:, None, None, :]
        n, count = context.shape[:2]
        shared = self.normal_context.expand(n, count, -1, -1)
        prefix = self.prefix[1].expand(n, count, -1, -1)
        suffix = self.abnormal_suffix.expand(n, count, -1, -1)
        return torch.cat([prefix, shared, context, suffix], dim=2).to(self.prefix.dtype)

    def prior(self, patches: torch.Tensor) -> torch.Tensor:
        """The meta-net on ``[n, k, D]`` selected patch embeddings: ``[n, width]``."""
        return self.meta_net(patches.flatten(1))


@dataclasses.dataclass
class FAPromptOutput:
    image_logits: torch.Tensor  # [B, 2] class embedding against the image's own texts, / temperature
    static_probs: torch.Tensor  # [B, 2, H, W] upsampled class probabilities of the static prompts
    prior_probs: torch.Tensor  # [B, 2, H, W] the same with the image's own prompts (with the prior)
    static_max: torch.Tensor  # [B] max over patches of the abnormal probability (static prompts)
    prior_max: torch.Tensor  # [B] the same with the prior
    prior_patches: torch.Tensor  # [B, k, D] the patch embeddings the prior is computed from
    prior: torch.Tensor  # [B, width] the meta-net's output added to the abnormal vectors
    image_text: torch.Tensor  # [B, 2, D] each image's normalised normal and abnormal texts (with the prior)
    abnormal_text: torch.Tensor  # [num_abnormal, D] static abnormality prompts' features (not normalised)

    @property
    def image_scores(self) -> torch.Tensor:
        """test.py: ``0.5 * (p_image + (2 * max1 + max2) / 3)``."""
        patch_max = (2 * self.static_max + self.prior_max) / 3
        return 0.5 * (self.image_logits.softmax(dim=-1)[:, ABNORMAL] + patch_max)

    def anomaly_map(self) -> torch.Tensor:
        """test.py: ``(S1_a + 1 - S1_n + S2_a + 1 - S2_n) / 4``, in its order of operations: ``[B, H, W]``."""
        s1, s2 = self.static_probs, self.prior_probs
        return (s1[:, ABNORMAL] + 1 - s1[:, NORMAL] + s2[:, ABNORMAL] + 1 - s2[:, NORMAL]) / 4.0


class FAPrompt(AnomalyCLIPBase):
    def __init__(self, cfg: FAPromptConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(cfg, clip_model, tokenizer)
        if len(cfg.map_layers) != 1:
            raise ConfigError(
                f"FAPrompt scores one layer's patches (the authors': the last block's), got map_layers={cfg.map_layers}"
            )
        if cfg.prior_selection not in PRIOR_SELECTIONS:
            raise ConfigError(
                f"prior_selection must be one of {PRIOR_SELECTIONS}, got {cfg.prior_selection!r}"
            )
        if not 1 <= cfg.prior_tokens <= self.vision.grid**2:
            raise ConfigError(
                f"prior_tokens must lie in 1..{self.vision.grid**2} (the patches), got {cfg.prior_tokens}"
            )
        self.prompts = CompoundAbnormalityPrompts(self.text, self.tokenizer, self.vision.output_dim, cfg)

    # --- texts -------------------------------------------------------------------------------------
    def _encode(self, prompts: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """Features of prompt embeddings ``[n, L, width]``; ``kinds`` ``[n]``: 0 normal, 1 abnormal prompt."""
        token_ids = self.prompts.token_ids[kinds]
        return self.encode_prompts(prompts, token_ids, list(self.prompts.deep_tokens))

    def _static_texts(self) -> torch.Tensor:
        """Features ``[1 + num_abnormal, D]`` (not normalised) of the normal and the abnormality prompts."""
        prompts = torch.cat([self.prompts.normal(), self.prompts.abnormal()[0]])
        return self._encode(prompts, self._kinds(1, prompts.device))

    def _kinds(self, copies: int, device: torch.device) -> torch.Tensor:
        """``[normal, abnormal x num_abnormal]`` repeated ``copies`` times, as token-id rows."""
        one = torch.tensor([0] + [1] * self.prompts.num_abnormal, device=device)
        return one.repeat(copies)

    @staticmethod
    def text_pair(normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
        """``[..., 2, D]`` normalised texts from normal ``[..., D]`` and abnormality prompt features
        ``[..., num_abnormal, D]``: the abnormal text is the mean of the raw features (train.py / test.py)."""
        return l2_normalize(torch.stack([normal, abnormal.mean(dim=-2)], dim=-2))

    def select_prior_patches(self, patches: torch.Tensor, static_abnormal: torch.Tensor) -> torch.Tensor:
        """``[B, k, D]`` of ``patches`` ``[B, N, D]``: the first ``k`` (the authors' code) or the ``k`` with the
        highest static abnormal probability ``[B, N]``, most abnormal first (``torch.topk``, sorted)."""
        k = self.cfg.prior_tokens
        if self.cfg.prior_selection == "first":
            return patches[:, :k]
        index = static_abnormal.topk(k, dim=1, largest=True, sorted=True).indices
        return patches.gather(1, index[..., None].expand(-1, -1, patches.shape[-1]))

    # --- scoring -----------------------------------------------------------------------------------
    def scores(self, features: ImageFeatures, size: tuple[int, int], texts: str = "train") -> FAPromptOutput:
        """Both maps, scores and what the loss needs, from (fresh or cached) image features.

        ``texts="train"``: one text-encoder pass over the static prompts and, per image, a copy of the normal
        prompt and its ten abnormality prompts (as train.py encodes them; each copy's deep tokens are rounded
        and get their gradient on their own). ``"inference"``: the static texts once (cached until the prompts
        change) and, per image, its abnormality prompts only (the normal prompt's features do not depend on
        the prior).
        """
        (layer,) = self.cfg.map_layers
        patches = features.patch_embeddings[layer].float()
        batch, temperature = patches.shape[0], self.cfg.temperature
        count = self.prompts.num_abnormal
        if texts == "train":
            static = self._static_texts()
        else:
            static = self.cached_for_inference("static_texts", self._static_texts)
        static_text = self.text_pair(static[0], static[1:])
        static_logits = class_logits(patches, static_text) / temperature
        static_patch_probs = static_logits.softmax(dim=-1)  # [B, N, 2]

        prior_patches = self.select_prior_patches(patches, static_patch_probs[..., ABNORMAL])
        prior = self.prompts.prior(prior_patches)
        abnormal = self.prompts.abnormal(prior).flatten(0, 1)  # [B * count, L, width]
        if texts == "train":
            normal = self.prompts.normal()[None].expand(batch, 1, -1, -1)
            prompts = torch.cat([normal, abnormal.unflatten(0, (batch, count))], dim=1).flatten(0, 1)
            per_image = self._encode(prompts, self._kinds(batch, prompts.device)).unflatten(
                0, (batch, 1 + count)
            )
            image_normal, image_abnormal = per_image[:, 0], per_image[:, 1:]
        else:
            kinds = torch.ones(batch * count, dtype=torch.long, device=abnormal.device)
            image_abnormal = self._encode(abnormal, kinds).unflatten(0, (batch, count))
            image_normal = static[0].expand(batch, -1)
        image_text = self.text_pair(image_normal, image_abnormal)  # [B, 2, D]
        prior_patch_probs = (class_logits(patches, image_text) / temperature).softmax(dim=-1)

        image_logits = class_logits(features.image_embedding.float()[:, None], image_text)[:, 0] / temperature
        return FAPromptOutput(
            image_logits=image_logits,
            static_probs=upsample_patch_probabilities(static_patch_probs, features.grid, size),
            prior_probs=upsample_patch_probabilities(prior_patch_probs, features.grid, size),
            static_max=static_patch_probs[..., ABNORMAL].max(dim=1).values,
            prior_max=prior_patch_probs[..., ABNORMAL].max(dim=1).values,
            prior_patches=prior_patches,
            prior=prior,
            image_text=image_text,
            abnormal_text=static[1:],
        )

    def forward(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> FAPromptOutput:
        size = size or tuple(images.shape[-2:])
        return self.scores(self.encode_images(images), size)

    # --- training ----------------------------------------------------------------------------------
    def loss(
        self, output: FAPromptOutput, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """train.py's objective, its terms added in its order:
        ``maps + CE(image) + focal(score) + 0.1 * decorrelation + prior``, where ``maps`` is focal + Dice + Dice
        on the static maps plus half of it on the prior maps, ``decorrelation`` the sum of |cos| over pairs of
        static abnormality prompts and ``prior`` the sum over normal images of ``mean(prior^2)``.
        ``masks=None`` (auxiliary data without pixel labels) drops the map terms."""
        cfg = self.cfg
        labels = labels.long()
        map_loss = output.image_logits.new_zeros(())
        if masks is not None:
            gt = (masks > 0.5).float()
            for weight, probs in (
                (cfg.static_map_loss_weight, output.static_probs),
                (cfg.prior_map_loss_weight, output.prior_probs),
            ):
                for term in segmentation_losses(probs, gt, cfg.focal_gamma):
                    map_loss = map_loss + weight * term
        image_loss = F.cross_entropy(output.image_logits, labels)
        score_loss = binary_focal_loss_with_logits(output.image_scores, labels.float(), gamma=cfg.focal_gamma)
        texts = l2_normalize(output.abnormal_text)
        decorrelation = torch.triu((texts @ texts.t()).abs(), diagonal=1).sum()  # pairs j < m
        normal = (labels == 0).to(output.prior.dtype)
        prior_loss = ((output.prior**2).mean(dim=1) * normal).sum()
        total = (
            map_loss
            + image_loss
            + cfg.score_loss_weight * score_loss
            + cfg.decorrelation_loss_weight * decorrelation
            + cfg.prior_loss_weight * prior_loss
        )
        return {
            "loss": total,
            "map_loss": map_loss,
            "image_loss": image_loss,
            "score_loss": score_loss,
            "decorrelation_loss": decorrelation,
            "prior_loss": prior_loss,
        }

    # --- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched inference: ``(image scores [B], smoothed anomaly maps [B, H, W])``, one per image."""
        output = self.scores(self.encode_images(images), size, texts="inference")
        return output.image_scores, gaussian_blur(output.anomaly_map(), self.cfg.gaussian_sigma)
