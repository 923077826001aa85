"""Dual-Image Enhanced CLIP (Zhang et al., arXiv 2405.04782): test images of a category as each other's
visual reference, a joint vision-language score and test-time adaptation with synthesized anomalies,
on AnoVL's text branch; training-free. Beyond AnoVL the method is a documented reconstruction.

The spec (``spec.py``) and the configs load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.dual_image.config import DualImageConfig, DualImageTTAConfig, VisualReferenceConfig

__all__ = [
    "DualImageCLIP",
    "DualImageConfig",
    "DualImageModule",
    "DualImageTTAConfig",
    "ReferenceBank",
    "VisualReferenceConfig",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.dual_image.model import DualImageCLIP
    from lightning_modules.dual_image.module import DualImageModule, ReferenceBank

    return {
        "DualImageCLIP": DualImageCLIP,
        "DualImageModule": DualImageModule,
        "ReferenceBank": ReferenceBank,
    }[name]
