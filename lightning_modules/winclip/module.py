"""WinCLIP in Lightning: batched, training-free evaluation (anomalib's preprocessing: spec.py); WinCLIP+
under the few-shot protocol (the runner's references, ``set_references``)."""

from __future__ import annotations

import torch

from lightning_modules.category_module import TrainingFreeModule
from lightning_modules.eval_config import EvalConfig
from lightning_modules.winclip.config import WinCLIPConfig
from lightning_modules.winclip.model import WinCLIP


class WinCLIPModule(TrainingFreeModule):
    method_name = "winclip"

    def __init__(
        self, cfg: WinCLIPConfig, eval_cfg: EvalConfig | None = None, model: WinCLIP | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else WinCLIP(cfg))

    def set_references(self, category_id: int, images: torch.Tensor) -> None:
        self.model.set_references(category_id, images)

    def clear_references(self) -> None:
        self.model.clear_references()
