"""CLIP and CLIP-AC: training-free baselines of AnomalyCLIP's comparison (single prompt pair / ensemble).

The specs (``spec.py``) and the configs load without torch; the model and module classes below are
imported on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.clip_zero_shot.config import CLIPACConfig, CLIPConfig

__all__ = ["CLIPACConfig", "CLIPConfig", "CLIPZeroShot", "CLIPZeroShotModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.clip_zero_shot.model import CLIPZeroShot
    from lightning_modules.clip_zero_shot.module import CLIPZeroShotModule

    return {"CLIPZeroShot": CLIPZeroShot, "CLIPZeroShotModule": CLIPZeroShotModule}[name]
