"""CMG (cross-modal guidance, arXiv 2310.02821): CMER + CMLE guiding an unsupervised vision detector.

The spec (``spec.py``) and the configs load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.cmg.config import CMERConfig, CMGConfig, CMLEConfig, DetectorConfig

__all__ = ["CMG", "CMERConfig", "CMGConfig", "CMGModule", "CMLEConfig", "DetectorConfig"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.cmg.model import CMG
    from lightning_modules.cmg.module import CMGModule

    return {"CMG": CMG, "CMGModule": CMGModule}[name]
