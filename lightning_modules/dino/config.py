"""Typed config of a DINO / DINOv2 backbone (timm's ``VisionTransformer``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DinoBackboneConfig:
    # A timm DINO/DINOv2 architecture ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", ...; DINO v1:
    # "vit_base_patch16_224", "vit_base_patch8_224" with the tag "dino") or "zsad-tiny-dinov2" /
    # "zsad-tiny-dino" (2 blocks of width 32, patch 14 / 16: random weights only, for tests and the demo).
    name: str = "vit_small_patch14_dinov2"
    # Where the weights come from, never downloaded: a timm pretrained tag ("lvd142m") whose file is in the
    # Hugging Face cache, a local file (timm's safetensors/bin, or Meta's dinov2_vits14_pretrain.pth), or null
    # for random weights (tests and the demo only).
    pretrained: str | None = "lvd142m"
    image_size: int = 252  # input size (square); centre-cropped to a multiple of the patch size
    # How the input is cropped to a multiple of the patch size: "centre" (anomalib) or "top_left" (the
    # AnomalyDINO authors' ``prepare_image``: the last rows and columns dropped).
    crop: str = "centre"
    # false: inputs of image_size x image_size (after the crop); true: any size and aspect (AnomalyDINO's
    # authors: the short side at image_size, the long one as the file's aspect gives it), the position
    # embedding resampled for each input's patch grid (with interpolate_offset: DINOv2's
    # ``interpolate_pos_encoding`` on a non-square grid).
    any_aspect: bool = False
    # The position embedding (37 x 37 patches at timm's 518 px) is resampled bicubically to the input's grid.
    # false: without antialiasing, as anomalib's TimmFeatureExtractor forces (for ONNX export); true: timm's
    # default.
    pos_embed_antialias: bool = False
    # null: the position embedding is resampled to the input's grid by size (timm, anomalib). A number: DINO's
    # and DINOv2's own ``interpolate_pos_encoding`` (their "historical kludge", ``interpolate_offset`` 0.1):
    # F.interpolate with scale_factor (grid + offset) / native grid, which samples slightly other positions;
    # nothing at the native grid (their early return). MuSc's DINO backbones use 0.1, as the authors' models.
    interpolate_offset: float | None = None
    cache_dir: str | None = None  # the Hugging Face hub cache to look in (None: its default)
