"""AA-CLIP: anomaly-aware CLIP through residual adapters, trained in two stages (text, then vision).

The spec (``spec.py``) and the config load without torch; the model classes below are imported on first
use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.aa_clip.config import AAClipConfig

__all__ = ["AAClip", "AAClipConfig", "AAClipOutput"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.aa_clip.model import AAClip, AAClipOutput

    return {"AAClip": AAClip, "AAClipOutput": AAClipOutput}[name]
