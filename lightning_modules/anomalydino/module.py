"""AnomalyDINO in Lightning: batched, training-free evaluation under the few-shot protocol (the runner's
references, ``set_references``); anomalib's preprocessing (spec.py)."""

from __future__ import annotations

import logging

import torch

from datamodules.index import known_category_names
from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.anomalydino.model import AnomalyDINO
from lightning_modules.category_module import TrainingFreeModule
from lightning_modules.eval_config import EvalConfig

log = logging.getLogger(__name__)


class AnomalyDINOModule(TrainingFreeModule):
    """``predict_batch`` scores each image against its category's references; no texts (the category ids
    only select the memory)."""

    method_name = "anomalydino"

    def __init__(
        self, cfg: AnomalyDINOConfig, eval_cfg: EvalConfig | None = None, model: AnomalyDINO | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else AnomalyDINO(cfg))
        self._warned: set[tuple[str, ...]] = set()

    def use_datamodule_categories(self) -> None:
        """Which of the datamodule's categories are foreground-masked (before the references are read).
        The lists may name categories of other datasets (the authors' preset names MVTec AD's and VisA's
        together), so a name is not refused: one that no category here nor of any known dataset has is
        most likely a typo that would silently leave its category unmasked or unrotated, and is warned."""
        names = self.cfg.masked_categories
        categories = self.trainer.datamodule.categories
        for key in ("masked_categories", "rotated_categories"):
            listed = getattr(self.cfg, key) or []
            unknown = sorted(set(listed) - set(categories) - known_category_names())
            if unknown and self.trainer.is_global_zero and (key, *unknown) not in self._warned:
                self._warned.add((key, *unknown))  # once per run, not per target and draw
                log.warning(
                    "method.%s names %s, a category of no known dataset and not of this one (%s): a typo? "
                    "it changes nothing",
                    key,
                    ", ".join(unknown),
                    ", ".join(categories),
                )
        masked = (
            [i for i, c in enumerate(categories) if names is None or c in names] if self.cfg.masking else []
        )
        self.model.set_masked_categories(masked)

    def on_test_epoch_start(self) -> None:
        self.use_datamodule_categories()  # the references' memory depends on it
        super().on_test_epoch_start()

    def load_references(self) -> None:
        """The base's loading, with each reference also rotated by ``rotation_angles`` where
        ``rotate_references`` applies to the category (the authors' augmentation, before preprocessing)."""
        self.clear_references()
        if self.references is None:
            return
        cfg = self.cfg
        for category_id, category in enumerate(self.trainer.datamodule.categories):
            rotate = cfg.rotate_references and (
                cfg.rotated_categories is None or category in cfg.rotated_categories
            )
            stacks = self.references.images_by_size(category, list(cfg.rotation_angles) if rotate else None)
            self.set_references(category_id, [stack.to(self.device) for stack in stacks])

    def set_references(self, category_id: int, images: torch.Tensor | list[torch.Tensor]) -> None:
        self.model.set_references(category_id, images)

    def clear_references(self) -> None:
        self.model.clear_references()
