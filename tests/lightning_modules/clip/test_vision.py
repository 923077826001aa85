"""The dual-path encoder against unmodified open_clip and against a direct V-V computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_modules.clip.vision import DualPathVisionEncoder, resize_position_embedding


def test_plain_encoder_equals_open_clip(tiny_clip):
    model, _ = tiny_clip
    images = torch.randn(3, 3, 32, 32)
    encoder = DualPathVisionEncoder(model.visual, image_size=32)
    features = encoder(images, layers=[6])
    torch.testing.assert_close(
        encoder.project(features.class_token), model.encode_image(images), atol=1e-5, rtol=1e-5
    )


def test_original_stream_unchanged_by_dual_path(tiny_clip):
    """With DPAM on blocks 3..6 the class token and the original stream equal plain open_clip."""
    model, _ = tiny_clip
    images = torch.randn(2, 3, 32, 32)
    dual = DualPathVisionEncoder(model.visual, image_size=32, dpam_blocks=range(3, 7))
    x = dual.embed(images)
    for block in model.visual.transformer.resblocks:
        x = block(x)
    features = dual(images, layers=[1, 2])
    torch.testing.assert_close(features.class_token, x[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        dual.project(features.class_token), model.encode_image(images), atol=1e-5, rtol=1e-5
    )
    # before the first dual block, returned tokens are the original stream
    plain = model.visual.transformer.resblocks[0](dual.embed(images))
    torch.testing.assert_close(features.tokens[1], plain, atol=1e-5, rtol=1e-5)


def _vv_attention_reference(block, h: torch.Tensor) -> torch.Tensor:
    """softmax(V V^T / sqrt(d)) V per head, with explicit loops, then the block's output projection."""
    attn = block.attn
    width = h.shape[-1]
    heads = attn.num_heads
    d = width // heads
    w_v = attn.in_proj_weight[2 * width :]
    b_v = attn.in_proj_bias[2 * width :]
    out = torch.zeros_like(h)
    for b in range(h.shape[0]):
        v_all = h[b] @ w_v.t() + b_v
        per_head = []
        for k in range(heads):
            v = v_all[:, k * d : (k + 1) * d]
            weights = torch.softmax(v @ v.t() / math.sqrt(d), dim=-1)
            per_head.append(weights @ v)
        out[b] = torch.cat(per_head, dim=-1) @ attn.out_proj.weight.t() + attn.out_proj.bias
    return out


def test_vv_stream_equals_direct_computation(tiny_clip):
    model, _ = tiny_clip
    blocks = model.visual.transformer.resblocks
    images = torch.randn(2, 3, 32, 32)
    encoder = DualPathVisionEncoder(model.visual, image_size=32, dpam_blocks=[4, 5, 6])
    features = encoder(images, layers=[3, 4, 5, 6])

    x = encoder.embed(images)
    originals = [x]
    for block in blocks:
        originals.append(block(originals[-1]))
    # first dual block (4): x_vv = x_3 + AttnVV(LN1(x_3)); later: x_vv += AttnVV(LN1(x_ori_prev)), no MLP
    x_vv = originals[3] + _vv_attention_reference(blocks[3], blocks[3].ln_1(originals[3]))
    torch.testing.assert_close(features.tokens[4], x_vv, atol=1e-5, rtol=1e-5)
    for i in (5, 6):
        x_vv = x_vv + _vv_attention_reference(blocks[i - 1], blocks[i - 1].ln_1(originals[i - 1]))
        torch.testing.assert_close(features.tokens[i], x_vv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.tokens[3], originals[3], atol=1e-5, rtol=1e-5)


def _bilinear_reference(table: np.ndarray, new: int) -> np.ndarray:
    """Half-pixel-centre bilinear resampling (PyTorch align_corners=False semantics), written out."""
    old = table.shape[0]
    scale = old / new
    out = np.zeros((new, new, table.shape[2]))
    for i in range(new):
        for j in range(new):
            y = max((i + 0.5) * scale - 0.5, 0.0)
            x = max((j + 0.5) * scale - 0.5, 0.0)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, old - 1), min(x0 + 1, old - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                table[y0, x0] * (1 - dy) * (1 - dx)
                + table[y0, x1] * (1 - dy) * dx
                + table[y1, x0] * dy * (1 - dx)
                + table[y1, x1] * dy * dx
            )
    return out


def test_position_embedding_interpolation_24_to_37_like_the_authors():
    """ViT-L-14-336 at 518 px: 24x24 -> 37x37, bilinear without antialiasing; class position kept."""
    torch.manual_seed(0)
    pos = torch.randn(1 + 24 * 24, 8, dtype=torch.float64)
    resized = resize_position_embedding(pos, 37, "bilinear")
    assert resized.shape == (1 + 37 * 37, 8)
    torch.testing.assert_close(resized[0], pos[0])
    expected = _bilinear_reference(pos[1:].reshape(24, 24, 8).numpy(), 37).reshape(-1, 8)
    np.testing.assert_allclose(resized[1:].numpy(), expected, atol=1e-12)
    bicubic = resize_position_embedding(pos, 37, "bicubic")
    assert (bicubic[1:] - resized[1:]).abs().max() > 1e-3  # open_clip's resize is a different number


def test_encoder_runs_at_a_new_input_size(tiny_clip):
    model, _ = tiny_clip
    encoder = DualPathVisionEncoder(model.visual, image_size=64, dpam_blocks=range(2, 7))
    features = encoder(torch.randn(1, 3, 64, 64), layers=[6])
    assert features.grid == (8, 8)
    assert features.tokens[6].shape == (1, 65, 64)
    assert model.visual.positional_embedding.shape[0] == 17  # the shared open_clip model is untouched


@pytest.mark.parametrize("blocks", [[0, 1], [2, 4], [7]])
def test_invalid_dpam_blocks_are_rejected(tiny_clip, blocks):
    model, _ = tiny_clip
    with pytest.raises(ValueError):
        DualPathVisionEncoder(model.visual, image_size=32, dpam_blocks=blocks)
