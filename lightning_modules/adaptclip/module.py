"""AdaptCLIP training (the three adapters in one Adam step) and batched zero-shot / k-shot evaluation."""

from __future__ import annotations

from typing import Any

import torch

from lightning_modules.adaptclip.config import AdaptCLIPConfig
from lightning_modules.adaptclip.model import AdaptCLIP
from lightning_modules.adaptclip.training_prompts import TrainingPrompts
from lightning_modules.base import ZeroShotModule, config_fields
from lightning_modules.category_module import backbone_identity
from lightning_modules.eval_config import EvalConfig
from lightning_modules.feature_cache import backbone_cache_identity

SHAPE_FIELDS = (
    "dpam_start_block",
    "feature_layers",
    "prompt_length",
    "visual_reduction",
    "pq_mid_dim",
    "pq_context",
    "pq_share_heads",
)


class AdaptCLIPModule(ZeroShotModule):
    """Trains the adapters only (Adam, the authors' betas); the CLIP weights never enter the optimizer."""

    method_name = "adaptclip"

    def __init__(
        self, cfg: AdaptCLIPConfig, eval_cfg: EvalConfig | None = None, model: AdaptCLIP | None = None
    ) -> None:
        super().__init__(eval_cfg)
        self.cfg = cfg
        self.model = model if model is not None else AdaptCLIP(cfg)
        self.prompts: TrainingPrompts | None = None

    def checkpoint_identity(self) -> dict[str, Any]:
        return {"method": self.method_name, "backbone": backbone_identity(self.cfg.backbone)} | config_fields(
            self.cfg, SHAPE_FIELDS
        )

    def trainable_state_keys(self) -> set[str]:
        """The adapters' parameters and their BatchNorm running statistics (what their train.py saves)."""
        prefixes = ("model.textual.", "model.visual.", "model.pq.")
        return {k for k in self.state_dict() if k.startswith(prefixes)}

    # --- feature cache: the frozen query features are the same every epoch -------------------------
    def feature_cache_identity(self) -> dict[str, Any]:
        return {
            "method": self.method_name,
            "backbone": backbone_cache_identity(self.cfg.backbone),
        } | config_fields(self.cfg, ("dpam_start_block", "feature_layers"))

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.features_to_tensors(self.model.encode_images(images))

    def feature_cache_bypass_reason(self) -> str | None:
        return None

    def on_fit_start(self) -> None:
        self.prompts = TrainingPrompts(
            self.trainer.datamodule, self.cfg.train_prompts, self.cfg.train_prompt_images
        )
        # each item's prompt images are read in the loader's workers, beside the item (``prompt_images``)
        self.trainer.datamodule.set_train_item_extras(self.prompts)

    def on_fit_end(self) -> None:
        self.trainer.datamodule.set_train_item_extras(None)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        masks = batch["mask"]
        if "features" in batch:  # served by the feature cache: no image, no encoder pass
            features = self.model.features_from_tensors(batch["features"])
        else:
            features = self.model.encode_images(batch["image"])
        images = batch["prompt_images"]  # [B, S, 3, H, W]: TrainingPrompts, read in the loader's workers
        b, s = images.shape[:2]
        prompt = self.model.encode_images(images.flatten(0, 1)).tokens
        prompt_tokens = [t.reshape(b, s, *t.shape[1:]) for t in prompt]
        output = self.model.scores(features, tuple(masks.shape[-2:]), prompt_tokens)
        has_masks = bool(batch["has_mask"].all())
        losses = self.model.loss(output, batch["label"], masks if has_masks else None)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=b)
        return losses["loss"]

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(batch["image"], batch["category_id"], tuple(batch["mask"].shape[-2:]))

    # --- k-shot (their test.py --k_shots K: the memory of K normal images per category) -----------------
    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        self.model.set_references(category_id, images)

    def clear_references(self) -> None:
        self.model.clear_references()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.model.trainable_parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas)
        )
