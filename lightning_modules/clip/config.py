"""Typed config of a CLIP backbone, shared by every method's config."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class BackboneConfig:
    name: str = "ViT-L-14-336-quickgelu"  # open_clip architecture (QuickGELU, as OpenAI's weights)
    # A pretrained tag found in the local cache ("openai"), a local weights file, or null for random
    # weights (tests and the demo only).
    pretrained: str | None = "openai"
    image_size: int = 518  # input size; the position embedding is interpolated (24x24 -> 37x37 at 518)
    pos_embed_interpolation: str = "bilinear"  # "bilinear" (authors' code) or "bicubic" (open_clip)
    cache_dir: str | None = None  # where open_clip / Hugging Face look for cached weights
