"""VCP-CLIP settings (docs/methods.md#vcp-clip); every default is the authors' code (xiaozhen228/VCP-CLIP,
``train.sh`` / ``test.sh`` and the ``argparse`` defaults of ``train.py`` / ``test.py``)."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig

VCP_ACTIVATIONS = ("gelu", "quick_gelu")
VCP_AUGMENTATIONS = ("authors", "none")


def _vcp_backbone() -> BackboneConfig:
    # Their Load_CLIP rebuilds OpenAI's ViT-L-14-336 at 518 px and resizes the position embedding with
    # open_clip's resize_pos_embed (bicubic, antialias=True): zsad's "bicubic".
    return BackboneConfig(name="ViT-L-14-336", pos_embed_interpolation="bicubic")


@dataclasses.dataclass
class VCPCLIPConfig:
    name: str = "vcp_clip"
    backbone: BackboneConfig = dataclasses.field(default_factory=_vcp_backbone)
    # MLP activation of both towers: their models/transformer.py builds every ResidualAttentionBlock with
    # nn.GELU (exact), although OpenAI's weights were trained with QuickGELU. "quick_gelu": the weights' own.
    activation: str = "gelu"
    # fp16 autocast of the whole forward on CUDA (their train.py / test.py: torch.cuda.amp.autocast()), the
    # loss outside it; nothing on CPU (their CPU runs are float32 too). false: float32 throughout.
    fp16_autocast: bool = True
    feature_layers: list[int] = dataclasses.field(default_factory=lambda: [6, 12, 18, 24])  # --features_list
    # Pre-VCP: r learnable category vectors (--prompt_len 2) plus a Conv1d(1, r, 3) of the global image
    # embedding (use_global: their --use_global, default true) replace <|class|> in the templates.
    prompt_length: int = 2
    use_global: bool = True
    normal_templates: list[str] = dataclasses.field(default_factory=lambda: ["a photo of a good"])
    abnormal_templates: list[str] = dataclasses.field(default_factory=lambda: ["a photo of a damaged"])
    # Deep text prompts (VPT-deep): n tokens (--deep_prompt_len 1) inserted after the start token and
    # replaced before every later text block (--total_d_layer_len 11 = depth - 1, which their code asserts),
    # each through a shared Linear (prompt_proj) and Dropout(prompt_dropout); an extra LayerNorm (prompt_norm,
    # eps 1e-6) before ln_final.
    deep_prompt_length: int = 1
    prompt_dropout: float = 0.1
    # Temperatures tau_1 (pre-VCP maps) and tau_2 (post-VCP maps): learnable, initialised at 0.07 and trained
    # with their own learning rate.
    temperature_init: float = 0.07
    post_vcp_heads: int = 8  # Zero_Parameter(num_heads=8)
    # Test-time maps: alpha * pre-VCP map + (1 - alpha) * post-VCP map (each the mean over layers of the
    # anomalous softmax), Gaussian sigma 8 (their calcuate_metric: alpha 0.2, gaussian_filter(sigma=8)).
    map_alpha: float = 0.2
    gaussian_sigma: float = 8.0
    # Image score: mean of the top-k pixels of the (unsmoothed) pre-VCP map + the same of the post-VCP map
    # (their can_k = -2000 on the 518 x 518 maps).
    image_score_top_k: int = 2000
    focal_gamma: float = 2.0
    # Adam(betas=(0.5, 0.999)): lr for everything but the two temperatures, temperature_lr for them.
    # train.sh: 4e-5 when training on VisA, 2e-5 on MVTec AD (the experiments set it).
    lr: float = 4e-5
    temperature_lr: float = 0.01
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])
    # Training augmentation of their dataset classes (mode "train"): "authors" = the albumentations pipeline
    # Rotate(30) / RandomRotate90 / RandomBrightnessContrast / GaussNoise / OneOf(Blur, ColorJitter,
    # GaussianBlur), each p=0.5, on the full-size image before the resize, plus on MVTec AD the 2x2 mosaic of
    # four anomalous images of the category (mosaic_rate, their --aug_rate 0.2). "none": no augmentation.
    augmentation: str = "authors"
    mosaic_rate: float = 0.2
    # the mosaic is in their MVTecDataset only (VisaDataset and OtherDataset have none)
    mosaic_datasets: list[str] = dataclasses.field(default_factory=lambda: ["mvtec"])
    # Whose semantics the albumentations transforms take (their code passes no parameters but p).
    # Reconstruction: their albumentations version is not recorded; "1.3.1": the version the same first
    # author's Bayes-PFL pins, current when their code was written (datamodules/augment_compat.py: GaussNoise
    # a variance uniform in [10, 50] pixel values squared, ColorJitter's hue in [-0.2, 0.2], ...); "1.4.24":
    # what their unpinned code gets with 1.4.24 (a noise standard deviation of 20-44 % of 255, hue in
    # [-0.5, 0.5], other rounding).
    albumentations: str = "1.3.1"
    # Frozen image features encoded once and reused (lightning_modules/feature_cache.py); bypassed while the
    # augmentation changes training images every epoch (the authors' protocol).
    cache_features: bool = True
    cache_dir: str | None = None
    cache_max_gb: float | None = None
