"""Map operations against scipy and direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from lightning_modules.ops import gaussian_blur, kornia_gaussian_blur, patch_class_probabilities


@pytest.mark.parametrize(("shape", "sigma"), [((3, 40, 37), 4.0), ((2, 5, 7), 4.0), ((1, 16, 16), 1.5)])
def test_gaussian_blur_equals_scipy(shape, sigma):
    maps = torch.rand(*shape, dtype=torch.float64)
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(("kernel", "sigma"), [(7, 1.0), (9, 1.5), (3, 0.5)])
def test_kornia_gaussian_blur_equals_a_mirrored_scipy_correlation(kernel, sigma):
    """kornia's gaussian_blur2d (AA-CLIP's test maps): a given odd kernel size, torch's "reflect" border
    (the edge sample not repeated: scipy's "mirror")."""
    maps = torch.rand(2, 18, 13, dtype=torch.float64)
    offsets = np.arange(kernel) - kernel // 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    weights /= weights.sum()
    expected = scipy.ndimage.correlate1d(maps.numpy(), weights, axis=2, mode="mirror")
    expected = scipy.ndimage.correlate1d(expected, weights, axis=1, mode="mirror")
    # kornia builds the kernel in float32 (then casts it to the maps' dtype), hence 1e-6, not 1e-12
    np.testing.assert_allclose(kornia_gaussian_blur(maps, kernel, sigma).numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        kornia_gaussian_blur(maps, 4, sigma)


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
