"""CoOp (Zhou et al., IJCV 2022) for anomaly detection: learned class-aware context on a frozen CLIP.

Prompts ``[V1..Vn] normal [cls].`` / ``[V1..Vn] anomalous [cls].``: the context vectors replace the
embeddings of n placeholder words after the start token and are shared by every class (and by both
states unless ``separate_state_context``), so a context learnt on the source transfers to new classes.
Training uses the image label only (cross-entropy of the global image embedding against the two texts
of its class). Scores and maps are CLIP's (:class:`~lightning_modules.clip_zero_shot.model.CLIPZeroShot`)
with the learnt texts, which is why CoOp localises poorly in AnomalyCLIP's comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.clip.prompts import trim_after_end_token
from lightning_modules.clip.text import PromptTextEncoder
from lightning_modules.clip_zero_shot.model import CLIPZeroShot
from lightning_modules.coop.config import CoOpConfig
from lightning_modules.ops import class_logits, l2_normalize


class ClassAwareContext(nn.Module):
    """The learnable context and, once :meth:`set_classes` ran, the tokenised prompts around it.

    Prompt row ``2 c + s`` is class ``c`` in state ``s`` (0 normal, 1 anomalous).
    """

    def __init__(self, width: int, length: int, separate_states: bool, init_std: float = 0.02) -> None:
        super().__init__()
        if length < 1:
            raise ConfigError(f"context_length must be positive, got {length}")
        self.length = length
        self.context = nn.Parameter(
            torch.empty(2 if separate_states else 1, length, width).normal_(std=init_std)
        )
        for name in ("token_ids", "prefix", "suffix"):
            self.register_buffer(name, None, persistent=False)

    def set_classes(
        self, text_encoder: PromptTextEncoder, tokenizer, words: Sequence[str], state_words: Sequence[str]
    ) -> None:
        if len(state_words) != 2:
            raise ConfigError(f"state_words must be [normal word, anomalous word], got {list(state_words)}")
        placeholder = " ".join(["X"] * self.length)
        sentences = [f"{placeholder} {state} {word}." for word in words for state in state_words]
        token_ids = trim_after_end_token(tokenizer(sentences).to(self.context.device), text_encoder)
        with torch.no_grad():
            embeddings = text_encoder.embed(token_ids)
        self.token_ids = token_ids
        self.prefix = embeddings[:, :1].clone()
        self.suffix = embeddings[:, 1 + self.length :].clone()

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``[len(rows), L, width]`` of the given prompt rows."""
        if self.token_ids is None:
            raise RuntimeError("call set_classes(words) with the categories' object words first")
        context = self.context[(rows % 2) % self.context.shape[0]].to(self.prefix.dtype)
        return torch.cat([self.prefix[rows], context, self.suffix[rows]], dim=1)


class CoOp(CLIPZeroShot):
    def __init__(self, cfg: CoOpConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        super().__init__(cfg, clip_model, tokenizer)
        self.prompts = ClassAwareContext(
            self.text.width, cfg.context_length, cfg.separate_state_context, cfg.context_init_std
        )

    def set_classes(self, words: Sequence[str]) -> None:
        self.prompts.set_classes(self.text, self.tokenizer, list(words), self.cfg.state_words)

    def class_text_for(self, category_ids: torch.Tensor) -> torch.Tensor:
        """``[B, 2, D]`` learnt texts of each image's class; differentiable w.r.t. the context.

        Only the classes present in the batch go through the text tower.
        """
        classes, inverse = torch.unique(category_ids.to(self.prompts.context.device), return_inverse=True)
        rows = (classes[:, None] * 2 + torch.arange(2, device=classes.device)).flatten()
        features = self.text(self.prompts(rows), self.prompts.token_ids[rows])
        return l2_normalize(features.float()).view(len(classes), 2, -1)[inverse]

    @torch.no_grad()
    def encode_image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen global image embedding ``[B, D]`` (L2-normalised; what the feature cache stores)."""
        return self.image_embedding(self.vision(images).class_token)

    def forward(self, images: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """Image logits ``[B, 2]`` (normal, anomalous): cosine of the global embedding / temperature."""
        return self.logits(self.encode_image_embedding(images), category_ids)

    def logits(self, image_embedding: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """The trainable part on a (fresh or cached) :meth:`encode_image_embedding`."""
        return class_logits(image_embedding, self.class_text_for(category_ids)) / self.cfg.temperature

    def loss(self, image_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(image_logits, labels.long())
