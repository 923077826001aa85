"""VCP-CLIP training (pixel losses of both map kinds on auxiliary data) and batched evaluation in Lightning."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, config_fields
from lightning_modules.category_module import backbone_identity
from lightning_modules.eval_config import EvalConfig
from lightning_modules.feature_cache import backbone_cache_identity
from lightning_modules.vcp_clip.config import VCPCLIPConfig
from lightning_modules.vcp_clip.model import VCPCLIP

#: config fields that shape the trainable parameters or the texts they were trained against
IDENTITY_FIELDS = (
    "activation",
    "feature_layers",
    "prompt_length",
    "deep_prompt_length",
    "use_global",
    "normal_templates",
    "abnormal_templates",
    "post_vcp_heads",
)


class VCPCLIPModule(ZeroShotModule):
    """Trains the prompts, pre-/post-VCP, the linear heads and both temperatures (Adam, the authors' two
    learning rates); the CLIP weights never enter the optimizer. No category names: the texts come from
    each image (their point: no product-specific prompts)."""

    method_name = "vcp_clip"

    def __init__(
        self, cfg: VCPCLIPConfig, eval_cfg: EvalConfig | None = None, model: VCPCLIP | None = None
    ) -> None:
        super().__init__(eval_cfg)
        self.cfg = cfg
        self.model = model if model is not None else VCPCLIP(cfg)

    def checkpoint_identity(self) -> dict[str, Any]:
        fields = config_fields(self.cfg, IDENTITY_FIELDS)
        return {"method": self.method_name, "backbone": backbone_identity(self.cfg.backbone), **fields}

    # --- feature cache: the frozen image features are the same every epoch (without augmentation: the
    # datamodule, handed the spec's train_augmentation, is the one that says the cache steps aside) ------
    def feature_cache_identity(self) -> dict[str, Any]:
        return {
            "method": self.method_name,
            "backbone": backbone_cache_identity(self.cfg.backbone),
            "feature_layers": list(self.cfg.feature_layers),
            "activation": self.cfg.activation,
            "fp16_autocast": bool(self.cfg.fp16_autocast),
        }

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.encode_images(images)

    def feature_cache_bypass_reason(self) -> str | None:
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not bool(batch["has_mask"].all()):
            raise ZsadError(
                "VCP-CLIP trains on pixel masks only: the source dataset has none (pick one with masks)"
            )
        masks = batch["mask"]
        size = tuple(masks.shape[-2:])
        features = batch["features"] if "features" in batch else self.model.encode_images(batch["image"])
        output = self.model.scores(features, size)
        loss = self.model.loss(output, masks)
        self.log("train/loss", loss, prog_bar=True, batch_size=masks.shape[0])
        return loss

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(batch["image"], size=tuple(batch["mask"].shape[-2:]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameter_groups(), betas=tuple(self.cfg.betas))
