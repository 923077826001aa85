"""Map operations against scipy and direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from lightning_modules.ops import gaussian_blur, patch_class_probabilities


@pytest.mark.parametrize(("shape", "sigma"), [((3, 40, 37), 4.0), ((2, 5, 7), 4.0), ((1, 16, 16), 1.5)])
def test_gaussian_blur_equals_scipy(shape, sigma):
    maps = torch.rand(*shape, dtype=torch.float64)
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-12)


def test_patch_probabilities_direct():
    torch.manual_seed(0)
    patches = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    probs = patch_class_probabilities(patches, text, grid=(2, 2), size=(2, 2), temperature=0.07)
    for b in range(2):
        for n in range(4):
            logits = torch.stack([patches[b, n] @ text[0], patches[b, n] @ text[1]]) / 0.07
            torch.testing.assert_close(probs[b, :, n // 2, n % 2], logits.softmax(0))
    upsampled = patch_class_probabilities(patches, text, grid=(2, 2), size=(8, 8))
    torch.testing.assert_close(upsampled.sum(1), torch.ones(2, 8, 8))
