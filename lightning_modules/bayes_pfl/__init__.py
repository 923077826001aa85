"""Bayes-PFL (Qu et al., CVPR 2025): Bayesian prompt flow learning for zero-shot anomaly detection.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.bayes_pfl.config import BayesPFLConfig

__all__ = ["BayesPFL", "BayesPFLConfig", "BayesPFLModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.bayes_pfl.model import BayesPFL
    from lightning_modules.bayes_pfl.module import BayesPFLModule

    return {"BayesPFL": BayesPFL, "BayesPFLModule": BayesPFLModule}[name]
