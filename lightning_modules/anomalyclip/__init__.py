"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic prompt learning for zero-shot anomaly detection.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.anomalyclip.config import AnomalyCLIPConfig

__all__ = ["AnomalyCLIP", "AnomalyCLIPConfig", "AnomalyCLIPModule", "ObjectAgnosticPrompts"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.anomalyclip.model import AnomalyCLIP, ObjectAgnosticPrompts
    from lightning_modules.anomalyclip.module import AnomalyCLIPModule

    return {
        "AnomalyCLIP": AnomalyCLIP,
        "AnomalyCLIPModule": AnomalyCLIPModule,
        "ObjectAgnosticPrompts": ObjectAgnosticPrompts,
    }[name]
