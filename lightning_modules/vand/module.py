"""VAND training (pixel losses on auxiliary data, optional mosaic) and batched evaluation in Lightning."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.category_module import CategoryTextModule, category_words
from lightning_modules.eval_config import EvalConfig
from lightning_modules.feature_cache import backbone_cache_identity
from lightning_modules.metrics.category_scores import CategoryScoreRule
from lightning_modules.mosaic import SameCategoryMosaic
from lightning_modules.vand.config import VANDConfig
from lightning_modules.vand.model import FEW_SHOT_SCORE, VAND


class VANDModule(CategoryTextModule):
    """Trains only the linear heads (Adam, the authors' betas); the CLIP weights never enter the optimizer."""

    method_name = "vand"
    identity_fields = ("feature_layers", "prompt_words")  # the heads are trained against these texts

    def __init__(
        self, cfg: VANDConfig, eval_cfg: EvalConfig | None = None, model: VAND | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else VAND(cfg))
        self.mosaic: SameCategoryMosaic | None = None

    def checkpoint_identity(self) -> dict[str, Any]:
        """Heads trained on GELU features do not fit QuickGELU ones: the resolved activation is part of it."""
        return {**super().checkpoint_identity(), "activation": self.model.activation}

    def use_datamodule_categories(self) -> None:
        """Texts from the folder names ("metal_nut", the authors' cls_name) or the datasets' object words."""
        datamodule = self.trainer.datamodule
        if self.cfg.prompt_words == "folder":
            self.model.set_classes(list(datamodule.category_folders))
        else:
            self.model.set_classes(category_words(datamodule))

    # --- few-shot (the authors' test.py --mode few_shot) --------------------------------------------
    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        self.model.set_references(category_id, images)

    def clear_references(self) -> None:
        self.model.clear_references()

    def image_score_rule(self) -> CategoryScoreRule | None:
        """Few-shot image scores are normalised over the category's test images (test.py)."""
        return FEW_SHOT_SCORE if self.references is not None else None

    # --- feature cache: the frozen image features are the same every epoch (unless mosaic) ------------
    def feature_cache_identity(self) -> dict[str, Any]:
        return {
            "method": self.method_name,
            "backbone": backbone_cache_identity(self.cfg.backbone),
            "feature_layers": list(self.cfg.feature_layers),
            "activation": self.model.activation,
            "fp16_autocast": bool(self.cfg.fp16_autocast),
        }

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.encode_images(images)

    def feature_cache_bypass_reason(self) -> str | None:
        if self.cfg.mosaic_rate > 0:
            return f"VAND's mosaic (mosaic_rate={self.cfg.mosaic_rate}) changes training images every epoch"
        return None

    def on_train_start(self) -> None:
        """The mosaic draws its tiles from the training dataset, known once the loader exists."""
        if self.cfg.mosaic_rate > 0:
            self.mosaic = SameCategoryMosaic(
                self.trainer.train_dataloader.dataset, self.cfg.mosaic_rate, self.cfg.mosaic_style
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not bool(batch["has_mask"].all()):
            raise ZsadError(
                "VAND trains on pixel masks only: the source dataset has none (pick one with masks)"
            )
        if self.mosaic is not None:
            batch = self.mosaic(batch)
        masks = batch["mask"]
        if "features" in batch:  # served by the feature cache: no image, no encoder pass
            output = self.model.scores(batch["features"], batch["category_id"], tuple(masks.shape[-2:]))
        else:
            output = self.model(batch["image"], batch["category_id"], tuple(masks.shape[-2:]))
        loss = self.model.loss(output, masks)
        self.log("train/loss", loss, prog_bar=True, batch_size=masks.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.model.trainable_parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas)
        )
