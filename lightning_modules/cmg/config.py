"""CMG settings (docs/methods.md#cmg). The public record is only the abstract, so every default below that is not
"what the abstract says" is a documented design choice and switchable."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig


def _cmg_backbone() -> BackboneConfig:
    """ViT-B-16-plus-240 (laion400m) at 240 px: the AnoVL/Dual-Image family's backbone (15x15 tokens)."""
    return BackboneConfig(name="ViT-B-16-plus-240", pretrained="laion400m_e32", image_size=240)


@dataclasses.dataclass
class DetectorConfig:
    """The unsupervised vision detector: a per-token MLP autoencoder on frozen CLIP patch tokens."""

    feature_layers: list[int] = dataclasses.field(
        default_factory=lambda: [3, 6, 9]
    )  # 1-indexed blocks, concatenated
    hidden_dim: int = 512
    latent_dim: int = 64  # bottleneck; the image's latent code (CMLE) is the mean of its kept tokens' codes
    jitter_scale: float = 0.2  # training-time feature jitter (UniAD): noise std = scale * ||f|| / sqrt(C)
    topk_ratio: float = 0.01  # image score = mean of the top fraction of map values (at least one pixel)
    gaussian_sigma: float = 4.0  # test-time smoothing of the anomaly map, in pixels of the mask size


@dataclasses.dataclass
class CMERConfig:
    """Cross-modal entropy reduction: occlusion relevance from CLIP image-text matching on a patch grid."""

    enabled: bool = True
    grid: int = 4  # regions per side; relevance r_k = s(x) - s(x with region k filled)
    keep_ratio: float = 0.75  # keep the top fraction of regions by relevance (used when threshold is null)
    threshold: float | None = None  # instead: keep the regions with r_k > threshold
    fill: str = "mean"  # occluded pixels: "mean" (CLIP mean colour, 0 after normalisation) or "image_mean"
    apply_to: str = (
        "tokens"  # "tokens": drop discarded tokens from loss/codes; "pixels": blank them in the input
    )
    apply_at_test: bool = True  # also at test (the map is zero over discarded regions); false: whole image
    chunk_size: int = 64  # occluded views per encoder call
    # Relevance scores are cached per image (path + its text) and settings (backbone, grid, fill). null: in
    # memory only; "run": {run_dir}/cache/cmer; any other string: that folder (shared across runs).
    cache_dir: str | None = "run"


@dataclasses.dataclass
class CMLEConfig:
    """Cross-modal linear embedding: locally-linear weights from text embeddings regularise the latent codes."""

    enabled: bool = True
    weight: float = 1.0  # lambda in L = L_detector + lambda * ||(I - W) Z||_F^2 / n
    k: int = 5  # nearest neighbours (in text space) per sample; capped at n - 1
    reg: float = 1e-3  # local Gram regulariser, times its trace (as scikit-learn's LLE); reg itself when the trace is 0
    scope: str = (
        "batch"  # "batch": W over the batch's texts; "global": over the whole training set + a code bank
    )
    normalize_latent: bool = True  # L2-normalise codes first, so shrinking them cannot zero the loss


@dataclasses.dataclass
class CMGConfig:
    name: str = "cmg"
    backbone: BackboneConfig = dataclasses.field(default_factory=_cmg_backbone)
    detector: DetectorConfig = dataclasses.field(default_factory=DetectorConfig)
    cmer: CMERConfig = dataclasses.field(default_factory=CMERConfig)
    cmle: CMLEConfig = dataclasses.field(default_factory=CMLEConfig)
    # One text per image: from captions_file when it has the image, else text_template filled with the
    # category's prompt name and the dataset's domain. Captions file: JSON object {"rel/path.png": "caption"}
    # or CSV with header "image,caption"; paths relative to the dataset root (absolute paths also match).
    captions_file: str | None = None
    text_template: str = "{domain} photo of a {name}."
    lr: float = 1e-3
    weight_decay: float = 1e-4
