"""AA-CLIP settings (docs/methods.md#aa-clip); every default is the authors' code (Mwxinnn/AA-CLIP at
53db195: train.py / test.py arguments, model/adapter.py, forward_utils.py, dataset/__init__.py)."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig

AA_CLIP_ACTIVATIONS = ("gelu", "quick_gelu")
# Stage 1's V-V ("surgery") attention: over the batch axis at each token position, as their Attention reads
# the (tokens, batch, width) tensor of their blocks as (batch, tokens, width); or over the tokens of each
# image (ClipSurgery's V-V attention, a deviation).
SURGERY_ATTENTION_AXES = ("batch", "tokens")
# Stage 1's segmentation loss: "last", the last feature layer only, as their loop *assigns* the loss per
# layer (`loss = calculate_seg_loss(...)`); "all": summed over the feature layers (a deviation).
TEXT_LOSS_LAYERS = ("last", "all")
AA_CLIP_PROMPT_WORDS = ("authors", "object_word")
AA_CLIP_AUGMENTATIONS = ("authors", "none")


def _aa_clip_backbone() -> BackboneConfig:
    # model/clip.py create_model: OpenAI's ViT-L-14-336 weights into CLIP(**ViT-L-14-336.json) at
    # --img_size 518; model/model.py resize_pos_embed: F.interpolate(bicubic, antialias=True).
    return BackboneConfig(pos_embed_interpolation="bicubic")


@dataclasses.dataclass
class AAClipConfig:
    name: str = "aa_clip"
    backbone: BackboneConfig = dataclasses.field(default_factory=_aa_clip_backbone)
    # MLP activation of both towers: their create_model rebuilds CLIP from model_configs/ViT-L-14-336.json,
    # which has no quick_gelu, so OpenAI's QuickGELU weights run with exact GELU. "quick_gelu": what the
    # weights were trained with (a deviation).
    activation: str = "gelu"
    # Blocks whose patch tokens make the maps (1-indexed); None: the four quarters of the vision depth,
    # their AdaptedCLIP(levels=[6, 12, 18, 24]) on 24 blocks.
    feature_layers: list[int] | None = None
    # Residual adapters (model/adapter.py): Linear(no bias) + LeakyReLU after each of the first N blocks,
    # mixed as w * a * |x| / |a| + (1 - w) * x.
    text_adapt_until: int = 3  # --text_adapt_until
    text_adapt_weight: float = 0.1  # --text_adapt_weight
    image_adapt_until: int = 6  # --image_adapt_until
    image_adapt_weight: float = 0.1  # --image_adapt_weight
    # LeakyReLU after the vision projections (seg_proj, det_proj): their --relu, a store_true flag, so off.
    # (The text projection that replaces CLIP's always has one: AdaptedCLIP passes relu=True literally.)
    projection_relu: bool = False
    # Stage 1's frozen "surgery" CLIP (train.py: clip_surgery.visual.DAPM_replace(--surgery_until_layer 20)):
    # the last surgery_until_layer - 1 blocks run V-V attention instead of Q-K attention.
    surgery_until_layer: int = 20
    surgery_attention_over: str = "batch"
    text_loss_layers: str = "last"
    # Object word of the prompts: "authors", their hand-written description of each class
    # (lightning_modules/aa_clip/object_words.py; zsad's object word where they have none), or
    # "object_word": the dataset's readable prompt name ("metal nut").
    prompt_words: str = "authors"
    temperature: float = 0.01  # their 100 * cos in every map
    text_norm_weight: float = 0.1  # --text_norm_weight: the squared mean normal-anomalous text cosine
    focal_gamma: float = 2.0  # FocalLoss() defaults (gamma 2, alpha None, smooth 1e-5)
    # Stage 1 (text adapters): Adam, no scheduler; stage 2 (image adapters): Adam + MultiStepLR per step.
    text_epochs: int = 5  # --text_epoch
    text_batch_size: int = 16  # --text_batch_size
    text_lr: float = 1e-5  # --text_lr
    image_epochs: int = 20  # --image_epoch
    image_batch_size: int = 2  # --image_batch_size
    image_lr: float = 5e-4  # --image_lr
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])  # both optimisers
    image_lr_milestones: list[int] = dataclasses.field(default_factory=lambda: [16000, 32000])
    image_lr_gamma: float = 0.5
    # Training augmentation (dataset/__init__.py BaseDataset): "authors", random rotation (30 degrees),
    # translation (0.15) and flips of the normalised image and its mask in both stages, colour jitter in
    # stage 2 (datamodules/augment.py, pipeline "aa_clip"); "none" (a deviation).
    augmentation: str = "authors"
    # Test maps: kornia gaussian_blur2d (reflect border) on the patch grid, by the dataset's domain
    # (forward_utils.calculate_similarity_map: kernel 7 / sigma 1 industrial, kernel 9 / sigma 1.5 medical).
    industrial_blur_kernel: int = 7
    industrial_blur_sigma: float = 1.0
    medical_blur_kernel: int = 9
    medical_blur_sigma: float = 1.5
