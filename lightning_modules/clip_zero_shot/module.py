"""CLIP and CLIP-AC in Lightning: batched, training-free evaluation."""

from __future__ import annotations

from lightning_modules.category_module import TrainingFreeModule
from lightning_modules.clip_zero_shot.config import CLIPConfig
from lightning_modules.clip_zero_shot.model import CLIPZeroShot
from lightning_modules.eval_config import EvalConfig


class CLIPZeroShotModule(TrainingFreeModule):
    """Serves both ``clip`` and ``clip_ac``: they differ only in the prompt ensemble."""

    def __init__(
        self, cfg: CLIPConfig, eval_cfg: EvalConfig | None = None, model: CLIPZeroShot | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else CLIPZeroShot(cfg))
        self.method_name = cfg.name
