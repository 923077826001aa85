"""WinCLIP (CVPR 2023), zero-shot: compositional prompts, multi-scale windows, harmonic aggregation.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.winclip.config import WinCLIPConfig

__all__ = ["WinCLIP", "WinCLIPConfig", "WinCLIPModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.winclip.model import WinCLIP
    from lightning_modules.winclip.module import WinCLIPModule

    return {"WinCLIP": WinCLIP, "WinCLIPModule": WinCLIPModule}[name]
