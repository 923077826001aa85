"""AnomalyCLIP (and FAPrompt, built on its code) training and batched evaluation in Lightning."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lightning_modules.anomalyclip.config import AnomalyCLIPBaseConfig
from lightning_modules.anomalyclip.model import AnomalyCLIP, AnomalyCLIPBase
from lightning_modules.base import ZeroShotModule
from lightning_modules.eval_config import EvalConfig
from lightning_modules.feature_cache import backbone_cache_identity


class AnomalyCLIPBaseModule(ZeroShotModule):
    """Training and batched evaluation of a method built on AnomalyCLIP's code (:class:`AnomalyCLIPBase`):
    only the prompts train (Adam, the authors' betas), the CLIP weights never enter the optimizer, and the
    frozen image features are cached. Subclasses name the method, its model and its prompt-shape keys."""

    model_class: type[AnomalyCLIPBase]
    shape_keys: tuple[str, ...] = ("deep_prompt_length", "deep_prompt_blocks")  # what a checkpoint must match

    def __init__(
        self,
        cfg: AnomalyCLIPBaseConfig,
        eval_cfg: EvalConfig | None = None,
        model: AnomalyCLIPBase | None = None,
    ) -> None:
        super().__init__(eval_cfg)
        self.cfg = cfg
        self.model = model if model is not None else self.model_class(cfg)

    def checkpoint_identity(self) -> dict[str, Any]:
        backbone = (
            dataclasses.asdict(self.cfg.backbone)
            if dataclasses.is_dataclass(self.cfg.backbone)
            else dict(self.cfg.backbone)
        )
        backbone.pop("cache_dir", None)
        shape = {k: getattr(self.cfg, k) for k in self.shape_keys}
        return {
            "method": self.method_name,
            "backbone": backbone,
            **{k: list(v) if isinstance(v, list) else v for k, v in shape.items()},
        }

    # --- feature cache: the frozen image features are the same every epoch ---------------------------
    def feature_cache_identity(self) -> dict[str, Any]:
        keys = ("dpam_start_block", "map_layers", "image_embedding_ln_post")
        return {"method": self.method_name, "backbone": backbone_cache_identity(self.cfg.backbone)} | {
            k: list(v) if isinstance(v := getattr(self.cfg, k), list) else v for k in keys
        }

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.features_to_tensors(self.model.encode_images(images))

    def feature_cache_bypass_reason(self) -> str | None:
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        masks = batch["mask"]
        has_masks = bool(batch["has_mask"].all())
        if "features" in batch:  # served by the feature cache: no image, no encoder pass
            features = self.model.features_from_tensors(batch["features"])
        else:
            features = self.model.encode_images(batch["image"])
        output = self.model.scores(features, size=tuple(masks.shape[-2:]))
        losses = self.model.loss(output, batch["label"], masks if has_masks else None)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=masks.shape[0])
        return losses["loss"]

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(batch["image"], size=tuple(batch["mask"].shape[-2:]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.model.trainable_parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas)
        )


class AnomalyCLIPModule(AnomalyCLIPBaseModule):
    method_name = "anomalyclip"
    model_class = AnomalyCLIP
    shape_keys = ("prompt_length", "deep_prompt_length", "deep_prompt_blocks")
