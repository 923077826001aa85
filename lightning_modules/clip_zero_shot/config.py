"""CLIP and CLIP-AC settings (docs/methods.md#clip-and-clip-ac): training-free, per-category hand-written
prompts. Neither has code from AnomalyCLIP's authors; the comparison's text (its appendix) fixes the prompts,
the rest follows CLIP's zero-shot recipe [reconstruction where marked]."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig


@dataclasses.dataclass
class CLIPConfig:
    name: str = "clip"
    # OpenAI ViT-L-14-336 at 518 px, as AnomalyCLIP's comparison (position embedding resized like its code).
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    prompt_ensemble: str = "clip"  # "a photo of a normal [cls]." / "a photo of an anomalous [cls]."
    # Average normalised sentence embeddings, CLIP's zero-shot recipe (matters for ensembles only).
    normalize_each_prompt: bool = True
    temperature: float = 0.07  # softmax temperature of image and patch scores (CLIP's learned 100 ~ 1/0.07)
    gaussian_sigma: float = 0.0  # test-time smoothing of the maps; none in the comparison [design choice]


@dataclasses.dataclass
class CLIPACConfig(CLIPConfig):
    name: str = "clip_ac"
    # [reconstruction] "normal [cls]" / "anomalous [cls]" (the labels a summary of the WinCLIP paper gives for
    # CLIP-AC) in CLIP's 80 ImageNet templates (unverified: AnomalyCLIP's appendix as recalled, not read);
    # docs/methods.md#clip-and-clip-ac lists the sources searched. "winclip": WinCLIP's compositional
    # ensemble (zsad's old CLIP-AC, which scores like WinCLIP's image score, not the published CLIP-AC).
    prompt_ensemble: str = "clip_ac"
