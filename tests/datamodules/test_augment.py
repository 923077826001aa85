"""Qu et al.'s albumentations pipeline (datamodules/augment.py, datamodules/augment_compat.py): seeded draws
from one stream, the transforms of the chosen albumentations, 1.3.1's kernel draw; AA-CLIP's torchvision
augmentation (geometry after the preprocessing, colour jitter from its stage 2). Pixel-for-pixel agreement
with the authors' pipelines: tests/lightning_modules/{vcp_clip,bayes_pfl}/test_*_parity.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import AnomalyDataModule, DataConfig
from datamodules.augment import TrainAugmentation, aa_clip_geometry, bayes_pfl_augment, vcp_clip_augment
from datamodules.augment_compat import GaussianBlur, qu_et_al_pipeline
from datamodules.resumable import derived_seed


@pytest.mark.parametrize("augment", [vcp_clip_augment, bayes_pfl_augment], ids=["vcp_clip", "bayes_pfl"])
def test_an_item_s_augmentation_is_a_function_of_its_seed_drawn_from_one_stream(augment):
    """The same seed gives the same image, another seed another. Each transform applies with p = 0.5
    independently of the others (their global generators): an image leaves the five unchanged in about 1
    of 32 seeds. Generators of one seed per transform (albumentations' Compose.set_random_seed) would apply
    all five or none: unchanged in every second seed."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    mask = Image.new("L", (24, 16))
    first, again, other = (np.array(augment(image, mask, seed)[0]) for seed in (5, 5, 6))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    unchanged = sum(
        np.array_equal(np.array(augment(image, mask, seed)[0]), np.array(image)) for seed in range(96)
    )
    assert unchanged <= 9  # 3 expected; 48 with one seed per transform


@pytest.mark.parametrize(
    ("albumentations", "noise_std", "hue"),
    [("1.3.1", (10**0.5, 50**0.5), 0.2), ("1.4.24", (0.2 * 255, 0.44 * 255), 0.5)],
)
def test_the_transforms_are_those_of_the_chosen_albumentations(albumentations, noise_std, hue):
    """GaussNoise: 1.3.1's variance in [10, 50] (a standard deviation of 3.2-7.1) or 1.4.24's standard
    deviation of 20-44 % of 255; ColorJitter's hue range."""
    pipeline = qu_et_al_pipeline(albumentations)
    noise = copy.deepcopy(pipeline.transforms[3])
    noise.p = 1.0
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    stds = []
    for seed in range(20):
        noise.set_random_seed(seed)
        stds.append((noise(image=flat)["image"].astype(float) - 128).std())
    assert noise_std[0] * 0.9 < min(stds) and max(stds) < noise_std[1] * 1.1
    assert pipeline.transforms[4].transforms[1].hue == (-hue, hue)


def test_gaussian_blur_draws_1_3_1_s_kernels():
    """``randrange(3, 8)``, an even draw moved to the next odd size: 3, 5, 7 with probabilities 1/5, 2/5, 2/5."""
    blur = GaussianBlur()
    blur.set_random_seed(0)
    sizes = np.array([blur.get_params()["ksize"] for _ in range(20000)])
    np.testing.assert_allclose([np.mean(sizes == k) for k in (3, 5, 7)], [0.2, 0.4, 0.4], atol=0.015)


def test_an_unknown_pipeline_or_version_is_refused():
    with pytest.raises(ValueError, match="pipeline must be one of"):
        TrainAugmentation("vcpclip")
    with pytest.raises(ValueError, match="albumentations must be one of"):
        TrainAugmentation("vcp_clip", albumentations="2.0")


def test_aa_clip_geometry_moves_image_and_mask_together_filling_zeros():
    """Their rotation, translation and flips run on ``cat([image, mask])``: a channel equal to the mask stays
    equal to it; what moves in is 0 (the normalised space's 0, as theirs); the draws are the seed's."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(32, 32, generator=g) > 0.7).float()
    image = torch.cat([mask[None], torch.randn(2, 32, 32, generator=g) + 5.0])  # never 0 before
    outputs = [aa_clip_geometry(image, mask, torch.Generator().manual_seed(s)) for s in range(32)]
    assert all(torch.equal(out[0], m) for out, m in outputs)
    assert any(bool((out[1:] == 0).any()) for out, _ in outputs)  # rotated or shifted in
    again = aa_clip_geometry(image, mask, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], outputs[5][0]) and not torch.equal(outputs[5][0], outputs[6][0])


def test_aa_clip_jitters_colour_from_its_epoch_on_and_moves_after_the_preprocessing(synthetic_pair):
    """Before ``color_from_epoch`` (their stage 1) an item is the plain preprocessed item moved by the
    geometry of its seed; from then on colour jitter comes first (on the image before the resize)."""
    source, _ = synthetic_pair
    config = DataConfig(name="synthetic", root=str(source), num_workers=0)
    plain = AnomalyDataModule(config, 32).train_dataset()
    augmentation = TrainAugmentation("aa_clip", color_from_epoch=1)
    data = AnomalyDataModule(config, 32, augmentation=augmentation, seed=3).train_dataset()
    jittered = []
    for i in range(len(plain)):
        for epoch in (0, 1):
            g = torch.Generator().manual_seed(derived_seed(3, epoch, i, "augment"))
            image, mask = aa_clip_geometry(plain[i]["image"], plain[i]["mask"], g)
            item = data[(epoch, i)]
            assert torch.equal(item["mask"], mask) or epoch == 1
            if epoch == 0:
                assert torch.equal(item["image"], image)
            else:
                jittered.append(not torch.equal(item["image"], image))
    assert any(jittered)
