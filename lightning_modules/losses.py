"""Losses of AnomalyCLIP, VAND and FAPrompt, written to match the authors' definitions exactly."""

from __future__ import annotations

import torch


def focal_loss(
    probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> torch.Tensor:
    """Focal loss on class *probabilities* ``[B, C, H, W]`` with integer targets ``[B, H, W]``.

    As in the reference implementation both methods use: the one-hot target is clamped to
    ``[smooth / (C - 1), 1 - smooth]``, ``p_t = sum_c onehot_c * p_c + smooth``, and the loss
    ``-(1 - p_t)^gamma * log(p_t)`` is averaged over all pixels (alpha = 1).
    """
    num_classes = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, num_classes)
    one_hot = torch.nn.functional.one_hot(target.reshape(-1).long(), num_classes).to(flat.dtype)
    one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    p_t = (one_hot * flat).sum(dim=1) + smooth
    return (-((1.0 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice per image, averaged over the batch: ``1 - mean_i (2 sum(p g) + 1) / (sum p + sum g + 1)``."""
    pred = pred.reshape(pred.shape[0], -1)
    target = target.reshape(target.shape[0], -1).to(pred.dtype)
    dice = (2.0 * (pred * target).sum(dim=1) + smooth) / (pred.sum(dim=1) + target.sum(dim=1) + smooth)
    return 1.0 - dice.mean()


def binary_focal_loss_with_logits(
    inputs: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 1.0
) -> torch.Tensor:
    """FAPrompt's ``BinaryFocalLoss`` (``logits=True``): ``alpha (1 - p_t)^gamma BCE``, averaged, with
    ``BCE = binary_cross_entropy_with_logits(inputs, targets)`` and ``p_t = exp(-BCE)``. Their train.py
    feeds it a score in [0, 1] (not a logit), which zsad reproduces."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return (alpha * (1 - torch.exp(-bce)) ** gamma * bce).mean()
