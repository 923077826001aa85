"""MuSc (Li et al., ICLR 2024): training-free, transductive zero-shot anomaly detection.

Every test image of a category is scored against the other unlabeled test images of that category:

- :mod:`scoring`: the plain-torch pieces, LNAMD (local neighbourhood aggregation with multiple degrees),
  MSM (mutual scoring, batched) and RsCIN (image re-scoring through class-token neighbours);
- :mod:`model`: the frozen CLIP's features and a whole category's maps and scores;
- :mod:`module`: the LightningModule (a transductive pass over the loader, then the usual test steps).

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.musc.config import MuScConfig

__all__ = ["MuSc", "MuScConfig", "MuScModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.musc.model import MuSc
    from lightning_modules.musc.module import MuScModule

    return {"MuSc": MuSc, "MuScModule": MuScModule}[name]
