"""DINO / DINOv2 vision transformers (timm's), frozen, as patch-feature backbones (AnomalyDINO; MuSc's
DINO options can use the same). The config loads without torch; the encoder is imported on first use."""

from __future__ import annotations

from typing import Any

from lightning_modules.dino.config import DinoBackboneConfig

__all__ = ["DinoBackboneConfig", "DinoEncoder", "create_dino"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.dino import encoder

    return getattr(encoder, name)
