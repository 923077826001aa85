"""Dual-Image Enhanced CLIP settings. The paper's method section is not public: everything beyond AnoVL
is a documented reconstruction (docs/methods.md#dual-image, [reconstruction]) and switchable here."""

from __future__ import annotations

import dataclasses

from lightning_modules.anovl.config import AnoVLConfig, TTAConfig

PAIRINGS = ("random", "random_cycle", "nearest")
AGGREGATES = ("mean", "interval_mean", "min")
TEXTURES = ("procedural", "batch")


@dataclasses.dataclass
class VisualReferenceConfig:
    """Other test images of the same category as visual references: ``1 - max_q cos(F_a[p], F_b[q])``."""

    enabled: bool = True
    layers: list[int] = dataclasses.field(default_factory=lambda: [6, 9])  # blocks whose tokens are matched
    stream: str = "original"  # "original" (standard ViT tokens) or "vv" (the V-V path's)
    # "random": seeded mutual groups of k + 1 images (k = 1: pairs referencing each other, as the abstract's
    # "each image as a visual reference for the other"); "random_cycle": each image references the next k
    # of a seeded cycle (A->B->C..., not mutual; zsad's old default); "nearest": most similar class embedding.
    pairing: str = "random"
    k: int = 1  # partners per image; -1: every other image of the category (mutual scoring)
    aggregate: str = "mean"  # over partners: "mean", "interval_mean" (mean of the lowest fraction), "min"
    interval_fraction: float = 0.3  # interval_mean keeps max(1, floor(fraction * partners)) lowest distances
    weight: float = 1.0  # lambda in S = S_text + lambda * S_visual
    partner_chunk: int = 16  # partners compared at once: bounds memory to B x chunk x N x N similarities
    bank_dtype: str = "float32"  # storage of a category's reference tokens ("float16" halves it)


@dataclasses.dataclass
class DualImageTTAConfig(TTAConfig):
    """AnoVL's TTA plus optional image-space synthetic anomalies (DRAEM-style Perlin masks)."""

    # [reconstruction] a fresh adapter and optimizer per image: order-independent and DDP-safe, like the
    # visual reference banks. AnoVL's own default is the authors' sequential "image_keep_optimizer".
    reset: str = "image"

    image_anomalies: bool = False
    image_anomaly_weight: float = 0.5  # weight of the per-patch cross-entropy on synthesized images
    image_anomaly_copies: int = 1  # synthesized images per test image
    texture: str = (
        "procedural"  # foreign texture: "procedural" (coloured Perlin) or "batch" (another test image)
    )
    perlin_min_scale: int = 0  # Perlin lattice 2^[min, max) cells per side (DRAEM: 0, 6)
    perlin_max_scale: int = 6
    perlin_threshold: float = 0.5
    max_opacity: float = (
        0.8  # synthetic region = beta * image + (1 - beta) * texture, beta ~ U(0, max_opacity)
    )


@dataclasses.dataclass
class DualImageConfig(AnoVLConfig):
    name: str = "dual_image"
    visual: VisualReferenceConfig = dataclasses.field(default_factory=VisualReferenceConfig)
    tta: DualImageTTAConfig = dataclasses.field(default_factory=DualImageTTAConfig)
    # image score = (1 - w) * p_text + w * max(fused map on the token grid); 0 gives AnoVL's score
    image_score_map_weight: float = 0.5
    # [reconstruction] AnoVL's vl_test.py protocol on every dataset, VisA included (the paper's code is not
    # public; AnoVL's authors evaluate VisA with vis_test.py, whose tiles the visual references lack).
    visa_protocol: str = "vl_test"
