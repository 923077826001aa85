"""LightningModules of methods whose texts depend on the category (CLIP, CLIP-AC, WinCLIP, VAND, CoOp).

The model (a :class:`~lightning_modules.clip.frozen.FrozenCLIP`) is told the object words of the
datamodule it is about to see: the source's when fitting, each target's when testing. Batches carry
``category_id`` (an index into ``datamodule.categories``), which selects each image's texts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.eval_config import EvalConfig


def category_words(datamodule: Any) -> list[str]:
    """Object word of each category id (``datamodule.categories`` order), e.g. "metal nut"."""
    names = datamodule.full_index.prompt_names()
    return [names[category] for category in datamodule.categories]


def backbone_identity(backbone: Any) -> dict[str, Any]:
    """What of the backbone must match between a checkpoint and the module loading it (not the cache)."""
    identity = dataclasses.asdict(backbone) if dataclasses.is_dataclass(backbone) else dict(backbone)
    identity.pop("cache_dir", None)
    return identity


class CategoryTextModule(ZeroShotModule):
    """``predict_batch`` is ``model.predict(images, category_ids, mask size)``; subclasses add training."""

    identity_fields: tuple[str, ...] = ()  # config fields that shape the trainable parameters

    def __init__(self, cfg: Any, eval_cfg: EvalConfig | None, model: FrozenCLIP) -> None:
        super().__init__(eval_cfg)
        self.cfg = cfg
        self.model = model

    def checkpoint_identity(self) -> dict[str, Any]:
        fields = {}
        for name in self.identity_fields:
            value = getattr(self.cfg, name)
            fields[name] = list(value) if isinstance(value, list | tuple) else value
        return {"method": self.method_name, "backbone": backbone_identity(self.cfg.backbone), **fields}

    def use_datamodule_categories(self) -> None:
        self.model.set_classes(category_words(self.trainer.datamodule))

    def on_fit_start(self) -> None:
        self.use_datamodule_categories()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.use_datamodule_categories()

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(batch["image"], batch["category_id"], tuple(batch["mask"].shape[-2:]))


class TrainingFreeModule(CategoryTextModule):
    """Nothing to train: ``zsad run`` skips fitting (``MethodSpec.trains=False``); ``zsad train`` says so."""

    def _no_training(self) -> ZsadError:
        return ZsadError(
            f"method '{self.method_name}' is training-free: evaluate it with `zsad run` or `zsad test` (no checkpoint)"
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        raise self._no_training()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        raise self._no_training()
