"""CoOp: learnable class-aware prompt context on a frozen CLIP, trained with image labels only.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.coop.config import CoOpConfig

__all__ = ["ClassAwareContext", "CoOp", "CoOpConfig", "CoOpModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.coop.model import ClassAwareContext, CoOp
    from lightning_modules.coop.module import CoOpModule

    return {"ClassAwareContext": ClassAwareContext, "CoOp": CoOp, "CoOpModule": CoOpModule}[name]
