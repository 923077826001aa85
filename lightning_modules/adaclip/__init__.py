"""AdaCLIP: hybrid (static + dynamic) learnable prompts in both CLIP towers, HSF image score.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.adaclip.config import AdaCLIPConfig

__all__ = ["AdaCLIP", "AdaCLIPConfig", "AdaCLIPModule", "AdaCLIPOutput"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.adaclip.model import AdaCLIP, AdaCLIPOutput
    from lightning_modules.adaclip.module import AdaCLIPModule

    return {"AdaCLIP": AdaCLIP, "AdaCLIPModule": AdaCLIPModule, "AdaCLIPOutput": AdaCLIPOutput}[name]
