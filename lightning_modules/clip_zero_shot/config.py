"""CLIP and CLIP-AC settings (METHODS.md §3): training-free, per-category hand-written prompts."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig


@dataclasses.dataclass
class CLIPConfig:
    name: str = "clip"
    # OpenAI ViT-L-14-336 at 518 px, as AnomalyCLIP's comparison (position embedding resized like its code).
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    prompt_ensemble: str = "clip"  # "a photo of a normal [cls]." / "a photo of an anomalous [cls]."
    normalize_each_prompt: bool = True  # average normalised sentence embeddings (matters for ensembles only)
    temperature: float = 0.07  # softmax temperature of image and patch scores
    gaussian_sigma: float = 0.0  # test-time smoothing of the maps; none in the comparison [design choice]


@dataclasses.dataclass
class CLIPACConfig(CLIPConfig):
    name: str = "clip_ac"
    prompt_ensemble: str = "winclip"  # WinCLIP's compositional ensemble: 7/4 states x 22 templates
