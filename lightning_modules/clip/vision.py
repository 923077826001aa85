"""CLIP image encoder with intermediate tokens and the V-V attention dual path (DPAM).

In the chosen blocks, besides the standard attention ``softmax(Q K^T / sqrt(d)) V`` we compute
``softmax(V V^T / sqrt(d)) V`` from the same qkv projection and output projection, and keep two
residual streams (docs/methods.md#shared-clip-machinery):

- original stream: standard CLIP, unchanged (attention + MLP);
- V-V stream: at the first dual block ``x_vv = x + AttnVV(LN1(x))``; at later dual blocks
  ``x_vv += AttnVV(LN1(x_ori))`` with the input taken from the *original* stream, and no MLP.

The class token comes from the original stream; patch tokens for anomaly maps from the V-V stream.
Both attentions run through PyTorch's fused ``scaled_dot_product_attention``.

Deep visual prompts (AdaCLIP's, VPT-deep style): learned tokens appended after the patch tokens before
block 1 and overwritten with new ones before each following prompted block; they travel through every later
block, but the returned tokens never include them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from datamodules.errors import ConfigError

# "bicubic_no_antialias": F.interpolate's plain bicubic (a = -0.75), what open_clip 2.16's resize_pos_embed
# does (AdaCLIP's vendored copy); "bicubic" antialiases (torch's separable filter, a = -0.5) even when upsampling.
POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic", "bicubic_no_antialias")


@dataclasses.dataclass
class VisionFeatures:
    class_token: torch.Tensor  # [B, width] original stream after the last block, before ln_post
    tokens: dict[int, torch.Tensor]  # 1-indexed block -> [B, 1 + N, width]; V-V stream inside DPAM blocks
    grid: tuple[int, int]  # patch grid (rows, cols) of the N patch tokens
    # 1-indexed block -> [B, 1 + N, width] of the *original* stream (asked for with ``original_layers``);
    # image-to-image patch matching uses standard ViT tokens even where the V-V path runs.
    original_tokens: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)


def resize_position_embedding(pos_embed: torch.Tensor, grid: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[1 + s*s, D]`` to ``[1 + grid*grid, D]``; the class position is kept.

    ``bilinear`` (no antialiasing) is what AnomalyCLIP's code does at 518 px; ``bicubic`` with antialiasing
    is open_clip's own resize; ``bicubic_no_antialias`` AdaCLIP's (open_clip 2.16's). They differ by ~5e-2
    in the table, so faithful configs pick the authors'.
    """
    if mode not in POS_EMBED_INTERPOLATIONS:
        raise ConfigError(f"pos_embed_interpolation must be one of {POS_EMBED_INTERPOLATIONS}, got {mode!r}")
    side = int(round((pos_embed.shape[0] - 1) ** 0.5))
    if side * side + 1 != pos_embed.shape[0]:
        raise ValueError(f"position embedding of length {pos_embed.shape[0]} is not 1 + a square grid")
    if side == grid:
        return pos_embed.clone()
    compute_dtype = torch.float64 if pos_embed.dtype == torch.float64 else torch.float32
    table = pos_embed[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).to(compute_dtype)
    if mode == "bilinear":
        table = F.interpolate(table, size=(grid, grid), mode="bilinear", align_corners=False)
    elif mode == "bicubic_no_antialias":
        table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
    else:
        table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    table = table.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:1], table], dim=0)


def default_feature_layers(depth: int) -> list[int]:
    """The four quarters of the vision depth, ``depth // 4 * (1, 2, 3, 4)``: [6, 12, 18, 24] on 24 blocks
    (AdaCLIP's train.py rule; AA-CLIP's fixed levels)."""
    quarter = depth // 4
    if quarter < 1:
        raise ConfigError(f"a vision tower of {depth} blocks has no quarters; set method.feature_layers")
    return [quarter, 2 * quarter, 3 * quarter, 4 * quarter]


class DualPathVisionEncoder(nn.Module):
    """Wraps an open_clip ``VisionTransformer`` (weights shared, never modified).

    Args:
        visual: ``clip_model.visual``.
        image_size: input size; the position embedding is interpolated when the grid changes.
        dpam_blocks: 1-indexed blocks that run the dual path; must be contiguous (empty: plain CLIP).
        pos_embed_interpolation: one of :data:`POS_EMBED_INTERPOLATIONS`.
    """

    def __init__(
        self,
        visual: nn.Module,
        image_size: int,
        dpam_blocks: Iterable[int] = (),
        pos_embed_interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        for attribute in (
            "conv1",
            "class_embedding",
            "positional_embedding",
            "ln_pre",
            "ln_post",
            "proj",
            "transformer",
        ):
            if not hasattr(visual, attribute):
                raise TypeError(
                    f"expected an open_clip VisionTransformer, got {type(visual).__name__} without {attribute}"
                )
        if getattr(visual, "attn_pool", None) is not None:
            raise TypeError("vision towers with attentional pooling are not supported")
        self.visual = visual
        self.blocks = visual.transformer.resblocks
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        patch = visual.conv1.kernel_size[0]
        if image_size % patch:
            raise ConfigError(f"image_size {image_size} is not a multiple of the patch size {patch}")
        self.image_size = image_size
        self.grid = image_size // patch
        self.register_buffer(
            "pos_embed",
            resize_position_embedding(
                visual.positional_embedding.detach(), self.grid, pos_embed_interpolation
            ),
            persistent=False,
        )
        self.dpam_blocks = self._check_blocks(sorted(set(dpam_blocks)))
        # Recompute each plain block in the backward pass instead of keeping its activations (memory only;
        # the same numbers): for methods that backpropagate through the encoder (AdaCLIP's visual prompts).
        self.checkpoint_blocks = False

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def output_dim(self) -> int:
        return self.visual.proj.shape[1]

    def _check_blocks(self, blocks: Sequence[int]) -> frozenset[int]:
        if blocks and (blocks[0] < 1 or blocks[-1] > self.depth):
            raise ConfigError(f"DPAM blocks must lie in 1..{self.depth}, got {blocks}")
        if blocks and list(blocks) != list(range(blocks[0], blocks[-1] + 1)):
            raise ConfigError(f"DPAM blocks must be contiguous, got {blocks}")
        for i in blocks:
            attn = getattr(self.blocks[i - 1], "attn", None)
            if not isinstance(attn, nn.MultiheadAttention):
                raise TypeError(f"block {i} has no standard multi-head attention; DPAM cannot be applied")
        return frozenset(blocks)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + position embedding + ln_pre: ``[B, 1 + N, width]``."""
        x = self.visual.conv1(images.to(self.visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)
        return self.visual.ln_pre(x)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return checkpoint(self._run_block, block, x, use_reentrant=False)
        return self._run_block(block, x)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    @staticmethod
    def _dual_block(
        block: nn.Module, x: torch.Tensor, x_vv: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attn: nn.MultiheadAttention = block.attn
        b, n, width = x.shape
        heads = attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        original = F.scaled_dot_product_attention(q, k, v)
        value_value = F.scaled_dot_product_attention(v, v, v)

        def project(out: torch.Tensor) -> torch.Tensor:
            return F.linear(
                out.transpose(1, 2).reshape(b, n, width), attn.out_proj.weight, attn.out_proj.bias
            )

        x_ori = x + block.ls_1(project(original))
        x_ori = x_ori + block.ls_2(block.mlp(block.ln_2(x_ori)))
        x_vv = (x if x_vv is None else x_vv) + block.ls_1(project(value_value))
        return x_ori, x_vv

    def forward(
        self,
        images: torch.Tensor,
        layers: Iterable[int] = (),
        original_layers: Iterable[int] = (),
        deep_prompts: Sequence[torch.Tensor] = (),
    ) -> VisionFeatures:
        """Features of ``images``; ``deep_prompts`` (one ``[B, n, width]`` tensor per block from block 1, all
        with the same ``n``) are appended before block 1 and replace the last ``n`` tokens before each of the
        next ``len(deep_prompts) - 1`` blocks (their values as given: a caller rounds or casts them)."""
        wanted, wanted_original = set(layers), set(original_layers)
        for name, chosen in (("layers", wanted), ("original_layers", wanted_original)):
            if chosen and (min(chosen) < 1 or max(chosen) > self.depth):
                raise ConfigError(f"requested {name} {sorted(chosen)} outside 1..{self.depth}")
        deep_prompts = list(deep_prompts)
        if deep_prompts and self.dpam_blocks:
            raise ConfigError("deep visual prompts and the V-V dual path (DPAM) cannot be combined")
        if len(deep_prompts) > self.depth:
            raise ConfigError(f"{len(deep_prompts)} prompted blocks exceed the depth {self.depth}")
        x = self.embed(images)
        length = x.shape[1]  # class token + patch tokens; prompts follow them
        x_vv: torch.Tensor | None = None
        tokens: dict[int, torch.Tensor] = {}
        original: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks, start=1):
            if i <= len(deep_prompts):
                x = torch.cat([x[:, :length], deep_prompts[i - 1].to(x.dtype)], dim=1)
            if i in self.dpam_blocks:
                x, x_vv = self._dual_block(block, x, x_vv)
            else:
                x = self._block(block, x)
            if i in wanted:
                tokens[i] = x_vv if x_vv is not None else x[:, :length]
            if i in wanted_original:
                original[i] = x[:, :length]
        return VisionFeatures(
            class_token=x[:, 0], tokens=tokens, grid=(self.grid, self.grid), original_tokens=original
        )

    def transform_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Run already embedded tokens ``[B, L, width]`` through every block on the plain path (no DPAM).

        For sequences :meth:`forward` cannot express, such as WinCLIP's windows (a class token plus a
        subset of patch tokens, each with its own position embedding).
        """
        for block in self.blocks:
            x = self._block(block, x)
        return x

    def project(self, tokens: torch.Tensor, ln_post: bool = True) -> torch.Tensor:
        """Into the joint image-text space: ``ln_post(tokens) @ proj`` (or without ``ln_post``)."""
        if ln_post:
            tokens = self.visual.ln_post(tokens)
        return tokens @ self.visual.proj
