"""The segmentation losses against hand-computed values."""

from __future__ import annotations

import math

import torch

from lightning_modules.losses import dice_loss, focal_loss


def test_focal_loss_hand_computed():
    # one image, 1x2 pixels; p(abnormal) = 0.8 on an anomalous pixel, 0.3 on a normal pixel
    probs = torch.tensor([[[[0.2, 0.7]], [[0.8, 0.3]]]])  # [B=1, C=2, H=1, W=2]
    target = torch.tensor([[[1.0, 0.0]]])
    eps = 1e-5
    # one-hot clamped to [1e-5, 1 - 1e-5]; p_t = sum(onehot * p) + 1e-5
    p1 = (1 - eps) * 0.8 + eps * 0.2 + eps
    p2 = (1 - eps) * 0.7 + eps * 0.3 + eps
    expected = (-((1 - p1) ** 2) * math.log(p1) - ((1 - p2) ** 2) * math.log(p2)) / 2
    assert math.isclose(focal_loss(probs, target).item(), expected, rel_tol=1e-6)


def test_focal_loss_gamma_zero_is_cross_entropy_of_probabilities():
    probs = torch.tensor([[[[0.4]], [[0.6]]]])
    target = torch.tensor([[[1.0]]])
    p = (1 - 1e-5) * 0.6 + 1e-5 * 0.4 + 1e-5
    assert math.isclose(focal_loss(probs, target, gamma=0.0).item(), -math.log(p), rel_tol=1e-6)


def test_dice_loss_hand_computed_per_image_mean():
    pred = torch.tensor([[[0.5, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    gt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    dice_1 = (2 * 1.5 + 1) / (1.5 + 2 + 1)  # image 1
    dice_2 = (0 + 1) / (0 + 0 + 1)  # image 2: empty prediction of an empty mask is perfect
    assert math.isclose(dice_loss(pred, gt).item(), 1 - (dice_1 + dice_2) / 2, rel_tol=1e-6)
