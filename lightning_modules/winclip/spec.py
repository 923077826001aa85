"""WinCLIP's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.method_spec import (
    FEW_SHOT,
    LAION400M_VIT_B16_PLUS_240,
    ZERO_SHOT,
    MeasuredAt,
    MethodSpec,
)
from lightning_modules.published import anomalyclip_paper
from lightning_modules.winclip.config import WinCLIPConfig


def build_module(cfg: WinCLIPConfig, eval_cfg: Any) -> Any:
    from lightning_modules.winclip.module import WinCLIPModule

    return WinCLIPModule(cfg, eval_cfg)


def preprocessing(cfg: WinCLIPConfig, dataset: str | None) -> Any:
    """anomalib's: ``convert("RGB")``, then the tensor resized (bicubic, antialiased); the mask nearest."""
    from datamodules.transforms import ImagePreprocessing

    return ImagePreprocessing(resize_backend="tensor", mask_interpolation="nearest")


WINCLIP = MethodSpec(
    name="winclip",
    config_class=WinCLIPConfig,
    description="compositional prompt ensemble, 2x2/3x3 windows through the ViT, harmonic aggregation",
    tiny_config="winclip_tiny",
    build_module=build_module,
    trains=False,
    needs="nothing to train on (category names for the prompts)",
    preprocessing=preprocessing,
    protocols=(ZERO_SHOT, FEW_SHOT),  # WinCLIP+ with the few-shot protocol's references
    published=anomalyclip_paper("winclip"),
    # beside zsad's defaults (the reference code's settings) only: not beside a tiny or switched model
    published_at=MeasuredAt(files=LAION400M_VIT_B16_PLUS_240),
)
