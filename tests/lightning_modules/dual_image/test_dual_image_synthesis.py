"""Image-space synthetic anomalies: Perlin masks, blending, and the TTA targets built from them."""

from __future__ import annotations

import torch

from lightning_modules.dual_image.synthesis import perlin_mask, perlin_noise, synthesize_anomalies


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_perlin_noise_is_smooth_bounded_and_seeded():
    a = perlin_noise((40, 30), (4, 3), _g(0))
    assert a.shape == (40, 30) and a.abs().max() <= 1.5
    assert torch.equal(a, perlin_noise((40, 30), (4, 3), _g(0)))
    assert not torch.equal(a, perlin_noise((40, 30), (4, 3), _g(1)))
    assert (a[1:] - a[:-1]).abs().max() < 0.5  # gradient noise: neighbouring pixels are close
    # zero at the lattice points (integer coordinates)
    assert a[0, 0].abs() < 1e-6 and a[10, 10].abs() < 1e-6


def test_perlin_masks_are_binary_and_never_empty():
    for seed in range(20):
        mask = perlin_mask((32, 32), _g(seed))
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0


def test_synthesized_images_change_only_inside_their_masks():
    images = torch.randn(3, 3, 32, 32)
    for texture in ("procedural", "batch"):
        out, masks = synthesize_anomalies(images, [_g(s) for s in range(3)], texture=texture)
        assert out.shape == images.shape and masks.shape == (3, 32, 32)
        outside = (masks == 0)[:, None].expand_as(images)
        assert torch.equal(out[outside], images[outside])
        assert (out - images).abs().sum() > 0
    again, _ = synthesize_anomalies(images, [_g(s) for s in range(3)])
    first, _ = synthesize_anomalies(images, [_g(s) for s in range(3)])
    assert torch.equal(again, first)
