"""AnomalyDINO in Lightning: batched, training-free evaluation under the few-shot protocol (the runner's
references, ``set_references``); anomalib's preprocessing (spec.py)."""

from __future__ import annotations

import torch

from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.anomalydino.model import AnomalyDINO
from lightning_modules.category_module import TrainingFreeModule
from lightning_modules.eval_config import EvalConfig


class AnomalyDINOModule(TrainingFreeModule):
    """``predict_batch`` scores each image against its category's references; no texts (the category ids
    only select the memory)."""

    method_name = "anomalydino"

    def __init__(
        self, cfg: AnomalyDINOConfig, eval_cfg: EvalConfig | None = None, model: AnomalyDINO | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else AnomalyDINO(cfg))

    def use_datamodule_categories(self) -> None:
        """Nothing to prepare per category but the references (``load_references``)."""

    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        self.model.set_references(category_id, images)

    def clear_references(self) -> None:
        self.model.clear_references()
