"""The DINO backbone: timm's features at a fixed input size, weights from local files only."""

from __future__ import annotations

import copy

import pytest
import torch

from datamodules.errors import WeightsNotFoundError, ZsadError
from lightning_modules.dino.config import DinoBackboneConfig
from lightning_modules.dino.encoder import TINY_DINO, TINY_DINO_V1, DinoEncoder, create_dino


def tiny(image_size: int = 42, **overrides) -> DinoBackboneConfig:
    return DinoBackboneConfig(
        **{"name": TINY_DINO, "pretrained": None, "image_size": image_size, **overrides}
    )


def test_features_equal_timms_dynamic_size_forward_with_its_antialiased_position_embedding():
    torch.manual_seed(0)
    vit = create_dino(tiny())
    reference = copy.deepcopy(vit)  # 518 px: timm resamples its position embedding on every call
    encoder = DinoEncoder(tiny(image_size=70, pos_embed_antialias=True), vit)
    images = torch.randn(2, 3, 70, 70)
    (expected,) = reference.forward_intermediates(
        images, indices=[1], norm=True, output_fmt="NLC", intermediates_only=True
    )
    assert encoder(images).shape == (2, 25, 32)
    assert torch.equal(encoder(images), expected)


def test_a_size_off_the_patch_grid_is_centre_cropped():
    torch.manual_seed(0)
    encoder = DinoEncoder(tiny(image_size=45))
    images = torch.randn(1, 3, 45, 45)
    cropped, pads = encoder.crop(images)
    assert pads == (1, 2, 1, 2) and torch.equal(cropped, images[..., 1:43, 1:43])
    assert torch.equal(encoder(images), encoder(cropped))
    with pytest.raises(ZsadError, match="do not fit"):
        encoder(torch.randn(1, 3, 56, 56))


def test_weights_load_from_a_local_file_in_timms_and_in_metas_format(tmp_path):
    torch.manual_seed(0)
    saved = create_dino(tiny())
    timm_file, meta_file = tmp_path / "model.pth", tmp_path / "dinov2_pretrain.pth"
    torch.save(saved.state_dict(), timm_file)
    torch.save({**saved.state_dict(), "mask_token": torch.zeros(1, 32)}, meta_file)  # Meta's checkpoints
    images = torch.randn(1, 3, 42, 42)
    expected = DinoEncoder(tiny(), copy.deepcopy(saved))(images)
    for path in (timm_file, meta_file):
        torch.manual_seed(1)  # other random weights, overwritten by the file's
        assert torch.equal(DinoEncoder(tiny(pretrained=str(path)))(images), expected)


def test_missing_weights_are_one_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="file not found"):
        create_dino(tiny(pretrained=str(tmp_path / "missing.pth")))
    cfg = DinoBackboneConfig(pretrained="lvd142m", cache_dir=str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="not available offline.*pretrained=/path/to/file"):
        create_dino(cfg)
    with pytest.raises(WeightsNotFoundError, match="neither a file nor a pretrained tag.*lvd142m"):
        create_dino(DinoBackboneConfig(pretrained="laion2b"))
    with pytest.raises(ZsadError, match="unknown DINO architecture"):
        create_dino(DinoBackboneConfig(name="not-a-vit", pretrained=None))


def test_dinos_own_position_interpolation_samples_with_the_offset_scale_factor():
    """interpolate_offset: DINO's interpolate_pos_encoding (scale_factor (grid + 0.1) / 37, bicubic), not the
    size-based resampling; nothing at the native grid."""
    torch.manual_seed(0)
    vit = create_dino(tiny())
    pos = vit.pos_embed.detach().clone()
    encoder = DinoEncoder(tiny(image_size=112, interpolate_offset=0.1), copy.deepcopy(vit))
    grid = pos[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(8.1 / 37, 8.1 / 37), mode="bicubic")
    expected = torch.cat([pos[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 64, 32)], dim=1)
    assert torch.equal(encoder.vit.pos_embed, expected)
    by_size = DinoEncoder(tiny(image_size=112), copy.deepcopy(vit)).vit.pos_embed
    assert (by_size - expected).abs().max() > 1e-4
    native = DinoEncoder(tiny(image_size=518, interpolate_offset=0.1), copy.deepcopy(vit))
    assert torch.equal(native.vit.pos_embed, pos)


def test_layer_tokens_are_the_normalised_block_outputs_with_the_class_token():
    torch.manual_seed(0)
    encoder = DinoEncoder(tiny(image_size=42))
    images = torch.randn(2, 3, 42, 42)
    tokens, class_token = encoder.layer_tokens(images, [1, 0])
    (first, last), prefixes = zip(
        *encoder.vit.forward_intermediates(
            images,
            indices=[0, 1],
            norm=True,
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        ),
        strict=True,
    )
    assert [t.shape for t in tokens] == [(2, 10, 32)] * 2
    torch.testing.assert_close(tokens[0][:, 1:], last, rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens[1][:, 1:], first, rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens[0][:, 0], prefixes[1][:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(class_token, encoder.vit.forward_features(images)[:, 0], rtol=0, atol=1e-6)
    with pytest.raises(ZsadError, match="not among the 2"):
        encoder.layer_tokens(images, [2])


def test_the_tiny_dino_v1_has_no_layer_scale_and_16_px_patches():
    torch.manual_seed(0)
    encoder = DinoEncoder(tiny(name=TINY_DINO_V1, image_size=128, interpolate_offset=0.1))
    assert (encoder.patch_size, encoder.grid, encoder.vit.patch_embed.grid_size) == (16, 8, (8, 8))
    assert not any("ls1" in name for name, _ in encoder.vit.named_parameters())
    assert encoder(torch.randn(1, 3, 128, 128)).shape == (1, 64, 32)
