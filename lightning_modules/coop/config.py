"""CoOp settings as a zero-shot anomaly detection baseline (docs/methods.md#coop).

The public record fixes the prompt form and "image-level training only, frozen CLIP"; the rest are
[design choice]s, documented here: 12 context vectors (AnomalyCLIP's prompt length), one context shared
by all classes and both states, CLIP's logit scale (100, temperature 0.01) as CoOp, and AnomalyCLIP's
optimiser and schedule (Adam 1e-3, betas 0.5/0.999, batch 8, 15 epochs) on the same auxiliary data.
"""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig


@dataclasses.dataclass
class CoOpConfig:
    name: str = "coop"
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)  # ViT-L-14-336 at 518 px
    context_length: int = 12  # learnable vectors V1..Vn before "<state> <class>."
    separate_state_context: bool = False  # true: one context for "normal", another for "anomalous"
    state_words: list[str] = dataclasses.field(default_factory=lambda: ["normal", "anomalous"])
    context_init_std: float = 0.02
    temperature: float = 0.01  # CLIP's logit scale 100, for the image loss, image scores and maps
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])
    gaussian_sigma: float = 0.0
    # Frozen image features computed once per training split and reused every epoch (lightning_modules/
    # feature_cache.py); same results as encoding every step. cache_dir: also keep them on disk for later runs.
    cache_features: bool = True
    cache_dir: str | None = None
    cache_max_gb: float | None = None  # per process; None: at most half the free memory
