"""A frozen timm DINO / DINOv2 ViT whose last block's normalised patch tokens are the features.

Weights are never downloaded: they come from a local file (timm's format or Meta's ``*_pretrain.pth``, which
timm's ``checkpoint_filter_fn`` converts), from a timm pretrained tag already in the Hugging Face cache, or
are random (``pretrained: null``, tests and the demo). Anything else fails with one message that says where to
put the weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from datamodules.errors import WeightsNotFoundError, ZsadError
from lightning_modules.clip.factory import RANDOM_WEIGHTS
from lightning_modules.dino.config import DinoBackboneConfig

TINY_DINO = "zsad-tiny-dinov2"  # random weights only: tests and the demo
TINY_DINO_V1 = "zsad-tiny-dino"  # DINO (v1)'s architecture, random weights only: tests
WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors")
CROPS = ("centre", "top_left")  # DinoBackboneConfig.crop


def tiny_dino() -> VisionTransformer:
    """DINOv2's architecture (class token, LayerScale, patch 14, a 37 x 37 position embedding for timm's
    518 px) at width 32 with 2 blocks: random weights, for tests and the demo."""
    return VisionTransformer(
        img_size=518,
        patch_size=14,
        embed_dim=32,
        depth=2,
        num_heads=2,
        init_values=1e-5,
        num_classes=0,
        dynamic_img_size=True,
    )


def tiny_dino_v1() -> VisionTransformer:
    """DINO (v1)'s ViT (class token, no LayerScale, patch 16, a 14 x 14 position embedding for 224 px, as
    Meta's ``vit_base(patch_size=16)``) at width 32 with 2 blocks: random weights, for tests."""
    return VisionTransformer(
        img_size=224,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=0,
        dynamic_img_size=True,
    )


TINY_MODELS = {TINY_DINO: tiny_dino, TINY_DINO_V1: tiny_dino_v1}


def _hint(name: str, what: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME", "~/.cache/huggingface") + "/hub"
    return (
        f"DINO weights {what} are not available offline: download them where you have internet (e.g. Meta's "
        f"dinov2_vits14_pretrain.pth or dino_vitbase16_pretrain.pth, or timm's {name} model.safetensors) and set "
        f"method.backbone.pretrained=/path/to/file (or put them into the Hugging Face cache {cache})"
    )


def weights_file(cfg: DinoBackboneConfig) -> Path | None:
    """The local file the backbone's weights load from; None: random weights."""
    pretrained = cfg.pretrained
    if pretrained is None or pretrained.lower() in RANDOM_WEIGHTS:
        return None
    if "/" in pretrained or pretrained.endswith(WEIGHT_FILES):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"DINO weights file not found: {path}; set method.backbone.pretrained to an existing file or "
                "to a pretrained tag such as 'lvd142m' whose weights are in your Hugging Face cache"
            )
        return path
    if cfg.name in TINY_MODELS:
        raise ZsadError(f"'{cfg.name}' has random weights only: set method.backbone.pretrained=null")
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(f"{cfg.name}.{pretrained}", allow_unregistered=False)
    except RuntimeError:
        pretrained_cfg = None
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{cfg.name}.*")]
        raise WeightsNotFoundError(
            f"'{pretrained}' is neither a file nor a pretrained tag of {cfg.name} (tags: {', '.join(tags) or 'none'})"
        )
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(pretrained_cfg.hf_hub_id, filename, cache_dir=cfg.cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    raise WeightsNotFoundError(_hint(cfg.name, f"'{cfg.name}.{pretrained}' ({pretrained_cfg.hf_hub_id})"))


def create_dino(cfg: DinoBackboneConfig) -> VisionTransformer:
    """The architecture with its weights, in eval mode, every parameter frozen."""
    path = weights_file(cfg)  # before allocating a large random model
    if cfg.name in TINY_MODELS:
        model = TINY_MODELS[cfg.name]()
    elif cfg.name in timm.list_models():
        # as anomalib's TimmFeatureExtractor: timm's default (518 px) position embedding, dynamic input size;
        # no classifier head (DINO's weights have none; timm's default for vit_base_patch16_224 has one)
        model = timm.create_model(cfg.name, pretrained=False, dynamic_img_size=True, num_classes=0)
    else:
        raise ZsadError(
            f"unknown DINO architecture '{cfg.name}'; known include {', '.join(TINY_MODELS)}, "
            "vit_small_patch14_dinov2, vit_base_patch14_dinov2, vit_base_patch16_224 (timm.list_models('*dino*'), "
            "timm.list_pretrained('*.dino'))"
        )
    if not isinstance(model, VisionTransformer):
        raise ZsadError(f"'{cfg.name}' is not a timm VisionTransformer: pick a DINO/DINOv2 ViT")
    if path is not None:
        try:
            timm.models.load_checkpoint(model, str(path), filter_fn=checkpoint_filter_fn)
        except (OSError, RuntimeError, KeyError) as error:
            raise ZsadError(f"cannot load DINO '{cfg.name}' from {path}: {error}") from error
    return model.eval().requires_grad_(False)


class DinoEncoder(nn.Module):
    """``[B, 3, S, S]`` images -> ``[B, h*w, D]`` patch tokens of the last block after the final LayerNorm
    (class and register tokens dropped), as anomalib's ``TimmFeatureExtractor(output_fmt="NLC", norm=True)``.

    The input is centre-cropped to a multiple of the patch size (:meth:`crop`); the position embedding is
    resampled once to the grid of ``image_size`` (``pos_embed_antialias``), which is what timm's dynamic-size
    forward does on every call, or as DINO's own code does (``interpolate_offset``). :meth:`layer_tokens`
    gives the normalised tokens of any blocks (MuSc).
    """

    def __init__(self, cfg: DinoBackboneConfig, model: VisionTransformer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vit = model if model is not None else create_dino(cfg)
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.depth = len(self.vit.blocks)
        self.grid = cfg.image_size // self.patch_size
        if self.grid < 1:
            raise ZsadError(f"image_size {cfg.image_size} is smaller than the patch size {self.patch_size}")
        if cfg.crop not in CROPS:
            raise ZsadError(f"backbone.crop must be one of {CROPS}, got {cfg.crop!r}")
        if cfg.any_aspect:  # the position embedding stays the checkpoint's, resampled per input grid
            self._pos_embeds: dict[tuple[int, int], torch.Tensor] = {}
        else:
            self._fix_input_size(self.grid * self.patch_size)

    def _resampled_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The checkpoint's position embedding for a ``grid`` (rows, columns) of patches."""
        vit = self.vit
        old = tuple(vit.patch_embed.grid_size)
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        if self.cfg.interpolate_offset is not None:
            return offset_resample(vit.pos_embed.detach(), grid, old, prefix, self.cfg.interpolate_offset)
        return resample_abs_pos_embed(
            vit.pos_embed.detach(),
            new_size=list(grid),
            old_size=old,
            num_prefix_tokens=prefix,
            antialias=self.cfg.pos_embed_antialias,
        )

    def _fix_input_size(self, size: int) -> None:
        pos_embed = self._resampled_pos_embed((self.grid, self.grid))
        self.vit.patch_embed.set_input_size(img_size=(size, size))
        self.vit.pos_embed = nn.Parameter(pos_embed, requires_grad=False)

    def grid_of(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(rows, columns)`` of patches of an input of ``size`` (after the crop)."""
        return size[0] // self.patch_size, size[1] // self.patch_size

    def crop_pads(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)``: what the crop to the patch grid removes of an input of ``size``:
        anomalib's centre crop (its map is padded back by the same amounts: :func:`pad_back`) or the
        authors' top-left one (``crop: top_left``: the last rows and columns)."""
        crop_h, crop_w = size[0] % self.patch_size, size[1] % self.patch_size
        if self.cfg.crop == "top_left":
            return 0, crop_w, 0, crop_h
        return crop_w // 2, crop_w - crop_w // 2, crop_h // 2, crop_h - crop_h // 2

    def crop(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """``(images cropped to the patch grid, crop_pads)``."""
        h, w = images.shape[-2:]
        left, right, top, bottom = pads = self.crop_pads((h, w))
        return images[..., top : h - bottom, left : w - right], pads

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cropped, _ = self.crop(images)
        if self.cfg.any_aspect:
            return self._any_aspect_tokens(cropped)
        if (
            cropped.shape[-1] // self.patch_size != self.grid
            or cropped.shape[-2] // self.patch_size != self.grid
        ):
            raise ZsadError(
                f"images of {tuple(images.shape[-2:])} px do not fit the backbone's image_size {self.cfg.image_size}"
            )
        (tokens,) = self.vit.forward_intermediates(
            cropped,
            indices=[self.depth - 1],
            norm=True,
            return_prefix_tokens=False,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return tokens

    def _any_aspect_tokens(self, cropped: torch.Tensor) -> torch.Tensor:
        """The last block's normalised patch tokens of inputs of any grid (``any_aspect``): timm's forward
        with the checkpoint's position embedding resampled to this grid (cached per grid), as DINOv2's
        ``prepare_tokens_with_masks`` + ``get_intermediate_layers(norm=True)``."""
        vit = self.vit
        grid = self.grid_of(tuple(cropped.shape[-2:]))
        if min(grid) < 1:
            raise ZsadError(f"images of {tuple(cropped.shape[-2:])} px are smaller than a patch")
        if grid not in self._pos_embeds:
            self._pos_embeds[grid] = self._resampled_pos_embed(grid)
        pos_embed = self._pos_embeds[grid].to(cropped.device)
        x = vit.patch_embed(cropped)
        x = x.reshape(x.shape[0], -1, x.shape[-1]) if x.ndim == 4 else x  # NHWC (dynamic size) -> NLC
        prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if vit.no_embed_class:
            x = torch.cat([*prefix, x + pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos_embed
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        for block in vit.blocks:
            x = block(x)
        return vit.norm(x)[:, vit.num_prefix_tokens :]

    @torch.no_grad()
    def layer_tokens(
        self, images: torch.Tensor, blocks: Sequence[int]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([B, 1 + h*w, D] per 0-based block of blocks, [B, D])``: each block's output after the final
        LayerNorm, class token first (register tokens dropped), as DINO's and DINOv2's
        ``get_intermediate_layers`` (``norm=True``); and the last block's normalised class token, their
        ``forward`` (``x_norm_clstoken``). ``images`` must already be of ``image_size``."""
        if self.cfg.any_aspect:
            raise ZsadError("layer_tokens takes square inputs of image_size: set backbone.any_aspect=false")
        if images.shape[-2:] != (self.grid * self.patch_size,) * 2:
            raise ZsadError(
                f"images of {tuple(images.shape[-2:])} px: the backbone takes {self.grid * self.patch_size} px"
            )
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        wanted, taken = set(blocks), {}
        for i, block in enumerate(vit.blocks):
            x = block(x)
            if i in wanted:
                taken[i] = vit.norm(x)
        missing = sorted(wanted - set(taken))
        if missing:
            raise ZsadError(f"blocks {missing} are not among the {self.depth} of {self.cfg.name}")
        start = vit.num_prefix_tokens
        tokens = [torch.cat([taken[b][:, :1], taken[b][:, start:]], dim=1) for b in blocks]
        return tokens, vit.norm(x)[:, 0]


def offset_resample(
    pos_embed: torch.Tensor, grid: int | tuple[int, int], old: tuple[int, int], prefix: int, offset: float
) -> torch.Tensor:
    """DINO's and DINOv2's ``interpolate_pos_encoding`` (facebookresearch/dino and dinov2
    ``vision_transformer.py``): the ``[1, prefix + h*w, C]`` embedding's grid resampled bicubically (no
    antialiasing) with ``scale_factor`` (rows + offset) / old rows, (columns + offset) / old columns, in
    float32, unchanged at the native grid. ``grid``: the new (rows, columns) or one number for a square.
    (DINOv2 names the input's height ``w``: its scale factors are still (rows, columns) of the grid.)"""
    rows, cols = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if (rows, cols) == tuple(old):
        return pos_embed
    h, w = old
    dtype = pos_embed.dtype
    patches = pos_embed[:, prefix:].float().reshape(1, h, w, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches, scale_factor=((rows + offset) / h, (cols + offset) / w), mode="bicubic", antialias=False
    )
    if patches.shape[-2:] != (rows, cols):
        raise ZsadError(
            f"position embedding of {old} resampled to {tuple(patches.shape[-2:])}, not {(rows, cols)}"
        )
    patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([pos_embed[:, :prefix].float(), patches], dim=1).to(dtype)


def pad_back(maps: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """``[B, H, W]`` maps of the cropped input padded back to its size (edge values replicated)."""
    if not any(pads):
        return maps
    return F.pad(maps[:, None], pads, mode="replicate")[:, 0]
