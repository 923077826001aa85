"""WinCLIP settings (zero-shot, docs/methods.md#winclip); defaults are the paper's and, where the paper is
silent, the public reimplementations' (anomalib's WinCLIP)."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig


def _winclip_backbone() -> BackboneConfig:
    # LAION-400M ViT-B/16+ at its native 240 px (15 x 15 patches): no position-embedding resize.
    return BackboneConfig(
        name="ViT-B-16-plus-240",
        pretrained="laion400m_e31",
        image_size=240,
        pos_embed_interpolation="bicubic",
    )


@dataclasses.dataclass
class WinCLIPConfig:
    name: str = "winclip"
    backbone: BackboneConfig = dataclasses.field(default_factory=_winclip_backbone)
    prompt_ensemble: str = "winclip"  # compositional ensemble: 7 normal / 4 anomalous states x 22 templates
    # false (default): average the raw sentence embeddings of a state, then normalise the mean, as both public
    # reimplementations do (anomalib's WinClipModel._collect_text_embeddings; the paper does not say).
    # true: normalise each sentence embedding before averaging (CLIP's zero-shot recipe; zsad's old default).
    normalize_each_prompt: bool = False
    window_sizes: list[int] = dataclasses.field(
        default_factory=lambda: [2, 3]
    )  # in patches (32 and 48 px at 240)
    window_stride: int = 1  # in patches
    temperature: float = 0.07
    window_chunk_size: int = 4096  # window sequences per ViT pass (bounds memory, not results)
    gaussian_sigma: float = 0.0  # no smoothing in WinCLIP
