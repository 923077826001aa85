"""AnomalyCLIP training and batched evaluation in Lightning."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lightning_modules.anomalyclip.config import AnomalyCLIPConfig
from lightning_modules.anomalyclip.model import AnomalyCLIP
from lightning_modules.base import EvalConfig, ZeroShotModule


class AnomalyCLIPModule(ZeroShotModule):
    """Trains only the prompts (Adam, the authors' betas); the CLIP weights never enter the optimizer."""

    method_name = "anomalyclip"

    def __init__(self, cfg: AnomalyCLIPConfig, eval_cfg: EvalConfig | None = None, model: AnomalyCLIP | None = None) -> None:
        super().__init__(eval_cfg)
        self.cfg = cfg
        self.model = model if model is not None else AnomalyCLIP(cfg)

    @property
    def image_size(self) -> int:
        return self.cfg.backbone.image_size

    def checkpoint_identity(self) -> dict[str, Any]:
        backbone = dataclasses.asdict(self.cfg.backbone) if dataclasses.is_dataclass(self.cfg.backbone) else dict(self.cfg.backbone)
        backbone.pop("cache_dir", None)
        shape = {k: getattr(self.cfg, k) for k in ("prompt_length", "deep_prompt_length", "deep_prompt_blocks")}
        return {"method": self.method_name, "backbone": backbone, **{k: list(v) if isinstance(v, list) else v for k, v in shape.items()}}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        has_masks = bool(batch["has_mask"].all())
        output = self.model(images, size=tuple(masks.shape[-2:]))
        losses = self.model.loss(output, batch["label"], masks if has_masks else None)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=images.shape[0])
        return losses["loss"]

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(batch["image"], size=tuple(batch["mask"].shape[-2:]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.trainable_parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas))
