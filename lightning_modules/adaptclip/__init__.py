"""AdaptCLIP (Gao et al., AAAI 2026): visual, textual and prompt-query adapters on a frozen CLIP, zero-shot
and k-shot in one model.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.adaptclip.config import AdaptCLIPConfig

__all__ = ["AdaptCLIP", "AdaptCLIPConfig", "AdaptCLIPModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.adaptclip.model import AdaptCLIP
    from lightning_modules.adaptclip.module import AdaptCLIPModule

    return {"AdaptCLIP": AdaptCLIP, "AdaptCLIPModule": AdaptCLIPModule}[name]
