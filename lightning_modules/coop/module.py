"""CoOp training (image labels only) and batched evaluation in Lightning."""

from __future__ import annotations

from typing import Any

import torch

from lightning_modules.category_module import CategoryTextModule
from lightning_modules.coop.config import CoOpConfig
from lightning_modules.coop.model import CoOp
from lightning_modules.eval_config import EvalConfig
from lightning_modules.feature_cache import backbone_cache_identity


class CoOpModule(CategoryTextModule):
    """Trains only the context vectors; the CLIP weights never enter the optimizer."""

    method_name = "coop"
    identity_fields = ("context_length", "separate_state_context")

    def __init__(
        self, cfg: CoOpConfig, eval_cfg: EvalConfig | None = None, model: CoOp | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else CoOp(cfg))

    # --- feature cache: the frozen image embedding is the same every epoch ------------------------------
    def feature_cache_identity(self) -> dict[str, Any]:
        return {"method": self.method_name, "backbone": backbone_cache_identity(self.cfg.backbone)}

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_embedding": self.model.encode_image_embedding(images)}

    def feature_cache_bypass_reason(self) -> str | None:
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "features" in batch:  # served by the feature cache: no image, no encoder pass
            logits = self.model.logits(batch["features"]["image_embedding"], batch["category_id"])
        else:
            logits = self.model(batch["image"], batch["category_id"])
        loss = self.model.loss(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.model.trainable_parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas)
        )
