"""AnomalyDINO's scoring against independent references (numpy nearest neighbours, scipy's filter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules.errors import ZsadError
from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.anomalydino.model import AnomalyDINO
from lightning_modules.dino.config import DinoBackboneConfig
from lightning_modules.ops import anomalib_gaussian_blur


def tiny_model(image_size: int = 42, **overrides) -> AnomalyDINO:
    torch.manual_seed(0)
    backbone = DinoBackboneConfig(name="zsad-tiny-dinov2", pretrained=None, image_size=image_size)
    return AnomalyDINO(AnomalyDINOConfig(backbone=backbone, **overrides))


def test_anomalib_blur_is_scipys_gaussian_filter_truncated_at_four_sigma_with_mirror_boundary():
    maps = torch.rand(2, 40, 40)
    expected = [ndimage.gaussian_filter(m.double().numpy(), 4.0, mode="mirror", truncate=4.0) for m in maps]
    np.testing.assert_allclose(
        anomalib_gaussian_blur(maps, 4.0).numpy(), np.stack(expected), atol=5e-6
    )  # float32 sums


@pytest.mark.parametrize("neighbours", [1, 3])
def test_scores_are_nearest_reference_distances_and_their_top_percent(neighbours):
    model = tiny_model(num_neighbours=neighbours, top_fraction=0.25, gaussian_sigma=0.0)
    references, images = torch.randn(2, 3, 42, 42), torch.randn(3, 3, 42, 42)
    model.set_references(5, references)
    ids = torch.tensor([5, 5, 5])
    scores, maps = model.predict(images, ids, (42, 42))
    memory = model.encoder(references).reshape(-1, 32).double().numpy()
    features = model.encoder(images).double().numpy()
    memory /= np.linalg.norm(memory, axis=-1, keepdims=True)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    distances = np.sort(1 - features @ memory.T, axis=-1)[..., :neighbours].mean(-1)  # [3, 9]
    expected_scores = np.sort(distances, axis=-1)[:, -2:].mean(-1)  # int(9 * 0.25) = 2 patches
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-6)
    patches = np.kron(distances.reshape(3, 3, 3), np.ones((14, 14)))  # nearest upsampling of 3x3 patches
    np.testing.assert_allclose(maps.numpy(), patches, atol=1e-6)


def test_a_reference_image_scores_zero_and_a_category_without_references_is_refused():
    model = tiny_model(image_size=45)  # cropped to 42 px, the map padded back
    references = torch.randn(2, 3, 45, 45)
    model.set_references(0, references)
    scores, maps = model.predict(references, torch.tensor([0, 0]), (45, 45))
    assert maps.shape == (2, 45, 45) and scores.abs().max() < 1e-5 and maps.abs().max() < 1e-5
    with pytest.raises(ZsadError, match="protocol.shots=K"):
        model.predict(references, torch.tensor([1, 1]), (45, 45))
    model.clear_references()
    assert model.memory == {}


def test_masking_that_leaves_no_reference_patch_is_refused_and_other_categories_are_unmasked():
    model = tiny_model(masking=True)  # the tiny model's features are far below masking's threshold of 10
    references = torch.randn(1, 3, 42, 42)
    model.set_masked_categories([0])
    with pytest.raises(ZsadError, match="no foreground patch.*masked_categories"):
        model.set_references(0, references)
    model.set_references(1, references)  # not masked: every patch
    assert model.memory[1].shape == (9, 32)
