"""AnomalyDINO (WACV 2025), few-shot: DINOv2 patch features matched to K normal reference images.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.anomalydino.config import AnomalyDINOConfig

__all__ = ["AnomalyDINO", "AnomalyDINOConfig", "AnomalyDINOModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.anomalydino.model import AnomalyDINO
    from lightning_modules.anomalydino.module import AnomalyDINOModule

    return {"AnomalyDINO": AnomalyDINO, "AnomalyDINOModule": AnomalyDINOModule}[name]
