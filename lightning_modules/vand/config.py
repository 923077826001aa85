"""VAND / APRIL-GAN settings (docs/methods.md#vand); defaults are the authors' (ByChelsea/VAND-APRIL-GAN)."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig

VAND_ACTIVATIONS = ("authors", "gelu", "quick_gelu")


def _vand_backbone() -> BackboneConfig:
    # open_clip resizes the position embedding itself when created at 518 px (bicubic, antialiased).
    return BackboneConfig(pos_embed_interpolation="bicubic")


@dataclasses.dataclass
class VANDConfig:
    name: str = "vand"
    backbone: BackboneConfig = dataclasses.field(default_factory=_vand_backbone)
    # MLP activation of both towers. "authors": exact GELU whenever backbone.image_size differs from the
    # architecture's native input size (the authors' open_clip/factory.py then rebuilds the model from
    # ViT-L-14-336.json, which has no quick_gelu, and loads OpenAI's weights into it), the weights' own
    # QuickGELU at the native size (336: OpenAI's model as is). "gelu" / "quick_gelu" force one
    # (QuickGELU is what OpenAI's CLIP was trained with).
    activation: str = "authors"
    # fp16 autocast of the text encoding, the encoder, the heads and the maps on CUDA, as the authors'
    # torch.cuda.amp.autocast() (their loss, like zsad's, is computed outside it). On CPU it changes nothing:
    # the authors' code runs fp32 there too (CUDA autocast is disabled without CUDA). false: fp32 throughout
    # (unless trainer.precision asks for mixed precision).
    fp16_autocast: bool = True
    # Object word in the prompts: "folder", the category's folder name as the authors' meta.json cls_name
    # ("metal_nut", "pipe_fryum"), or "object_word", the dataset's prompt name ("metal nut").
    prompt_words: str = "folder"
    prompt_ensemble: str = "vand"  # 7 normal / 5 anomalous states x 35 templates
    normalize_each_prompt: bool = True  # as the authors' encode_text_with_prompt_ensemble
    feature_layers: list[int] = dataclasses.field(
        default_factory=lambda: [6, 12, 18, 24]
    )  # raw block outputs
    # Few-shot (the few-shot protocol, protocol.shots=K): the blocks whose raw patch tokens of the K
    # reference images form the memory bank (the authors' --few_shot_features); None: feature_layers, as
    # their test_few_shot.sh passes the same blocks to both (6 12 18 24).
    few_shot_layers: list[int] | None = None
    temperature: float = 0.01  # the authors' 100 * cos, for image and patch scores
    # 2x2 mosaic of same-category images, applied to this share of training images. The authors use it
    # when training on MVTec AD (rate 0.2, 3 epochs) and not on VisA (15 epochs): the experiment configs set
    # both (trainer.max_epochs, method.mosaic_rate).
    mosaic_rate: float = 0.2
    # "authors": per tile a folder (good or a defect type) then a file, full-size originals pasted 2x2 and
    # then preprocessed; "resized_tiles": zsad's earlier mosaic (uniform tiles, preprocessed tensors
    # area-downsampled). lightning_modules/mosaic.py.
    mosaic_style: str = "authors"
    focal_gamma: float = 2.0
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])
    gaussian_sigma: float = 0.0  # the authors' test script does not smooth
    # Frozen image features computed once per training split and reused every epoch (lightning_modules/
    # feature_cache.py); same results as encoding every step. Bypassed (reason logged) while mosaic_rate > 0:
    # the mosaic changes training images every epoch. cache_dir: also keep them on disk for later runs.
    cache_features: bool = True
    cache_dir: str | None = None
    cache_max_gb: float | None = None  # per process; None: at most half the free memory
