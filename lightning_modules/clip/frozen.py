"""A frozen CLIP with per-category texts: the common base of the baselines' plain-torch models.

CLIP, CLIP-AC, WinCLIP, VAND and CoOp all score an image against the texts of *its* category, so the
model is told the object words of the data it sees (:meth:`FrozenCLIP.set_classes`, called by the
LightningModule whenever the datamodule changes) and looks texts up by category id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.clip.config import BackboneConfig
from lightning_modules.clip.factory import create_clip
from lightning_modules.clip.prompts import encode_prompt_ensemble, get_ensemble
from lightning_modules.clip.text import PromptTextEncoder
from lightning_modules.clip.vision import DualPathVisionEncoder
from lightning_modules.ops import l2_normalize


class FrozenCLIP(nn.Module):
    """open_clip model (every weight frozen, always in eval mode), its encoders and the category texts.

    Args:
        backbone: architecture, weights and input size.
        prompt_ensemble: name in :data:`~lightning_modules.clip.prompts.PROMPT_ENSEMBLES` for the default
            :meth:`set_classes`; methods with learned texts override :meth:`set_classes` instead.
        normalize_each_prompt: average normalised sentence embeddings (else raw ones).
        dpam_blocks: V-V dual-path blocks of the vision encoder (none: plain CLIP).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        clip_model: nn.Module | None = None,
        tokenizer=None,
        prompt_ensemble: str | None = None,
        normalize_each_prompt: bool = True,
        dpam_blocks: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if clip_model is None:
            clip_model, tokenizer = create_clip(backbone.name, backbone.pretrained, backbone.cache_dir)
        clip_model.eval().requires_grad_(False)
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.vision = DualPathVisionEncoder(
            clip_model.visual,
            image_size=backbone.image_size,
            dpam_blocks=dpam_blocks,
            pos_embed_interpolation=backbone.pos_embed_interpolation,
        )
        self.text = PromptTextEncoder(clip_model)
        self.prompt_ensemble = get_ensemble(prompt_ensemble) if prompt_ensemble else None
        self.normalize_each_prompt = normalize_each_prompt
        self.register_buffer("class_text", None, persistent=False)  # [C, 2, D] after set_classes

    def train(self, mode: bool = True) -> FrozenCLIP:
        """The frozen CLIP stays in eval mode (no dropout) whatever Lightning asks."""
        super().train(mode)
        self.clip.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def set_classes(self, words: Sequence[str]) -> None:
        """Encode the prompt ensemble of every object word (category id ``i`` -> ``words[i]``)."""
        if self.prompt_ensemble is None:
            raise TypeError(f"{type(self).__name__} has no prompt ensemble; override set_classes")
        self.class_text = encode_prompt_ensemble(
            self.text,
            self.tokenizer,
            self.prompt_ensemble,
            list(words),
            normalize_each=self.normalize_each_prompt,
        )

    def class_text_for(self, category_ids: torch.Tensor) -> torch.Tensor:
        """``[B, 2, D]`` L2-normalised (normal, anomalous) texts of each image's category."""
        if self.class_text is None:
            raise RuntimeError("call set_classes(words) with the categories' object words first")
        return self.class_text[category_ids.to(self.class_text.device)]

    def image_embedding(self, class_token: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding ``ln_post(cls) @ proj``, L2-normalised (as ``encode_image``)."""
        return l2_normalize(self.vision.project(class_token).float())
