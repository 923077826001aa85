"""Shared CLIP machinery on open_clip, reused by every method.

- :mod:`factory`: create a model offline (local file, cache, or random weights) and the tiny test model;
- :mod:`vision`: the image encoder with position-embedding interpolation, intermediate tokens and the
  V-V attention dual path (DPAM);
- :mod:`text`: a text encoder that takes learned prompt embeddings and per-block deep tokens, and the
  two learned-context prompts (normal, anomalous) that AnomalyCLIP and AdaptCLIP train;
- :mod:`config`: the backbone's typed config, which methods' configs import without loading torch.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TINY_MODEL",
    "DualPathVisionEncoder",
    "LearnedContextPrompts",
    "PromptTextEncoder",
    "VisionFeatures",
    "create_clip",
    "register_builtin_configs",
]


def __getattr__(name: str) -> Any:
    """The names above on first use (torch and open_clip load then, not when a config is read)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.clip.factory import TINY_MODEL, create_clip, register_builtin_configs
    from lightning_modules.clip.text import LearnedContextPrompts, PromptTextEncoder
    from lightning_modules.clip.vision import DualPathVisionEncoder, VisionFeatures

    exports = {
        "TINY_MODEL": TINY_MODEL,
        "DualPathVisionEncoder": DualPathVisionEncoder,
        "LearnedContextPrompts": LearnedContextPrompts,
        "PromptTextEncoder": PromptTextEncoder,
        "VisionFeatures": VisionFeatures,
        "create_clip": create_clip,
        "register_builtin_configs": register_builtin_configs,
    }
    return exports[name]
