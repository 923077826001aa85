"""The DINO backbone: timm's features at a fixed input size, weights from local files only."""

from __future__ import annotations

import copy

import pytest
import torch

from datamodules.errors import WeightsNotFoundError, ZsadError
from lightning_modules.dino.config import DinoBackboneConfig
from lightning_modules.dino.encoder import TINY_DINO, DinoEncoder, create_dino


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
