"""VAND / APRIL-GAN: linear heads on raw multi-layer CLIP tokens, trained on auxiliary data with masks.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.vand.config import VANDConfig

__all__ = ["VAND", "VANDConfig", "VANDModule", "VANDOutput"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.vand.model import VAND, VANDOutput
    from lightning_modules.vand.module import VANDModule

    return {"VAND": VAND, "VANDModule": VANDModule, "VANDOutput": VANDOutput}[name]
