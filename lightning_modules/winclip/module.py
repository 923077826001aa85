"""WinCLIP in Lightning: batched, training-free evaluation."""

from __future__ import annotations

from datamodules.transforms import ImagePreprocessing
from lightning_modules.base import EvalConfig
from lightning_modules.category_module import TrainingFreeModule
from lightning_modules.winclip.config import WinCLIPConfig
from lightning_modules.winclip.model import WinCLIP


class WinCLIPModule(TrainingFreeModule):
    method_name = "winclip"

    def __init__(
        self, cfg: WinCLIPConfig, eval_cfg: EvalConfig | None = None, model: WinCLIP | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else WinCLIP(cfg))

    @property
    def preprocessing(
        self,
    ) -> ImagePreprocessing:  # anomalib: tensor Resize(BICUBIC, antialias), mask nearest
        return ImagePreprocessing(resize_backend="tensor", mask_interpolation="nearest")
