"""AnomalyCLIP settings; defaults are the authors' (docs/methods.md).

:class:`AnomalyCLIPBaseConfig` holds what every method built on AnomalyCLIP's code shares (its frozen CLIP
with DPAM, the deep text tokens, the optimiser, the feature cache); FAPrompt's config extends it too.
"""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig


@dataclasses.dataclass
class AnomalyCLIPBaseConfig:
    name: str = "anomalyclip"
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    deep_prompt_length: int = 4  # deep text tokens overwrite positions 1..4 ...
    deep_prompt_blocks: list[int] = dataclasses.field(
        default_factory=lambda: list(range(2, 10))
    )  # ... of text blocks 2..9
    # The authors' code casts each prompt's copy of the deep tokens to float16 before insertion (values and,
    # per copy, gradients rounded); False keeps them float32 (docs/methods.md).
    round_deep_prompts_fp16: bool = True
    dpam_start_block: int = (
        6  # V-V dual path on blocks 6..last (1-indexed); the authors' DPAM_layer=20 on 24 blocks
    )
    map_layers: list[int] = dataclasses.field(
        default_factory=lambda: [24]
    )  # released code (2025 fix): layer 24 only
    image_embedding_ln_post: bool = False  # the authors skip ln_post for the class token
    temperature: float = 0.07
    focal_gamma: float = 2.0
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])
    gaussian_sigma: float = 4.0  # test-time smoothing of the anomaly map
    # Frozen image features computed once per training split and reused every epoch (lightning_modules/
    # feature_cache.py); same results as encoding every step. cache_dir: also keep them on disk for later runs.
    cache_features: bool = True
    cache_dir: str | None = None
    cache_max_gb: float | None = None  # per process; None: at most half the free memory


@dataclasses.dataclass
class AnomalyCLIPConfig(AnomalyCLIPBaseConfig):
    prompt_length: int = 12  # learnable vectors V1..V12 / W1..W12 before "object" / "damaged object"
    pixel_loss_weight: float = 4.0  # lambda in L = CE + lambda * sum_layers(focal + dice + dice)
