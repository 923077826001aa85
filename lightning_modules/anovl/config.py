"""AnoVL settings; defaults are the authors' released code (hq-deng/AnoVL, docs/methods.md#anovl)."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig

# MVTec AD's texture classes, as in the authors' code (their prompts call them textures, not objects).
TEXTURE_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood")
TTA_RESETS = ("image", "image_keep_optimizer", "category")
SEQUENTIAL_TTA_RESETS = ("image_keep_optimizer", "category")  # state carried from image to image


def _anovl_backbone() -> BackboneConfig:
    return BackboneConfig(
        name="ViT-B-16-plus-240",
        pretrained="laion400m_e32",
        image_size=240,
        pos_embed_interpolation="bicubic",
    )


@dataclasses.dataclass
class TTAConfig:
    """Test-time adaptation of the text adapter ``A(f) = tanh(W f/|f| + b) @ T_all`` (one per image)."""

    enabled: bool = True
    steps: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01  # the authors call torch.optim.AdamW(params, 1e-3): AdamW's default decay
    noise_std: float = 0.055  # synthetic anomalies in feature space: f + N(0, (0.05 * 1.1)^2)
    noise_copies: int = 1  # noisy copies per step (the authors' noise_level)
    entropy_weight: float = 1.0  # H(p(f')) of the clean prediction
    hard_weight: float = 0.5  # -log p_a(noisy) - log p_n(clean)
    # "image_keep_optimizer" (default, the authors' vl_test.py): one AdamW per category, created once; the
    #   adapter's weights are re-initialised for every image but the optimizer's moments and step count carry
    #   over from image to image of the category. Sequential: an image's result depends on the images of its
    #   category before it, in the test split's index order (zsad's loader never shuffles). It cannot be
    #   split over DDP processes (each would see another subset): zsad refuses world_size > 1 with it.
    # "image": a fresh adapter and optimizer per image (order-independent, batched, DDP-safe; a deviation).
    # "category": adapter and optimizer persist within a category (continual TTA; order-dependent).
    reset: str = "image_keep_optimizer"


@dataclasses.dataclass
class AnoVLConfig:
    name: str = "anovl"
    backbone: BackboneConfig = dataclasses.field(default_factory=_anovl_backbone)
    dpam_start_block: int = 1  # V-V dual path on every block (1-indexed start .. last)
    map_layer: int = 12  # maps from this block's V-V tokens (the last one in the authors' code)
    multi_view: bool = True  # image score averaged over 22 views (rotations, translations, flip, grey, rot90)
    image_temperature: float = 1.0  # the authors take softmax of raw cosines (no temperature)
    pixel_temperature: float = 1.0
    pool_size: int = 3  # 3x3 average pooling (replicate padding) of the patch map before upsampling
    gaussian_sigma: float = 0.0  # optional extra smoothing at the mask size (off in the authors' code)
    # Object word in the prompts: "folder" (the authors': the category's folder name, their meta.json
    # cls_name, "metal_nut", with their class_mapping macaroni1/2 -> "macaroni") or "object_word" (the
    # dataset's prompt name, "metal nut").
    prompt_words: str = "folder"
    # VisA's protocol (lightning_modules/anovl/protocol.py): "vis_test" (the authors' vis_test.py: short side
    # to 240 without a crop, two tiles, class-token score, D x D adapter; anovl/tiled_visa.py) or "vl_test"
    # (vl_test.py's, as on MVTec AD; a deviation on VisA, recorded in results.json). Other datasets always
    # get vl_test.py's.
    visa_protocol: str = "vis_test"
    texture_categories: list[str] = dataclasses.field(default_factory=lambda: list(TEXTURE_CATEGORIES))
    templates_per_domain: int | None = None  # None: all 22 templates per medium (tiny configs use fewer)
    text_batch_size: int = 256  # sentences per text-encoder pass
    tta: TTAConfig = dataclasses.field(default_factory=TTAConfig)
    seed: int | None = None  # TTA noise / adapter init; None: the experiment seed
