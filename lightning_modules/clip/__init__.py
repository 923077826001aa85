"""Shared CLIP machinery on open_clip, reused by every method.

- :mod:`factory`: create a model offline (local file, cache, or random weights) and the tiny test model;
- :mod:`vision`: the image encoder with position-embedding interpolation, intermediate tokens and the
  V-V attention dual path (DPAM);
- :mod:`text`: a text encoder that takes learned prompt embeddings and per-block deep tokens.
"""

from lightning_modules.clip.factory import TINY_MODEL, create_clip, register_builtin_configs
from lightning_modules.clip.text import PromptTextEncoder
from lightning_modules.clip.vision import DualPathVisionEncoder, VisionFeatures

__all__ = [
    "TINY_MODEL",
    "DualPathVisionEncoder",
    "PromptTextEncoder",
    "VisionFeatures",
    "create_clip",
    "register_builtin_configs",
]
