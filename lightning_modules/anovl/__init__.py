"""AnoVL (Deng et al., arXiv 2308.15939): domain-aware state prompts, V-V tokens and test-time adaptation
on a frozen CLIP; training-free. Also the text branch and TTA of the dual-image method.

The spec (``spec.py``), the config and the protocol choice (``protocol.py``) load without torch; the model
and module classes below are imported on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.anovl.config import AnoVLConfig, TTAConfig

__all__ = [
    "AnoVL",
    "AnoVLConfig",
    "AnoVLModule",
    "BatchText",
    "CategoryText",
    "SyntheticAnomalies",
    "TTAConfig",
    "TestTimeAdaptation",
    "TextAdapter",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.anovl.model import AnoVL, BatchText, CategoryText
    from lightning_modules.anovl.module import AnoVLModule
    from lightning_modules.anovl.tta import SyntheticAnomalies, TestTimeAdaptation, TextAdapter

    exports = {
        "AnoVL": AnoVL,
        "AnoVLModule": AnoVLModule,
        "BatchText": BatchText,
        "CategoryText": CategoryText,
        "SyntheticAnomalies": SyntheticAnomalies,
        "TestTimeAdaptation": TestTimeAdaptation,
        "TextAdapter": TextAdapter,
    }
    return exports[name]
