"""The VAND (APRIL-GAN) authors' checkpoints (``torch.save({"trainable_linearlayer": state_dict})`` in their
train.py; released as ``exps/pretrained/mvtec_pretrained.pth`` and ``visa_pretrained.pth``) as zsad's
trainable state.

Their ``LinearLayer`` holds one ``nn.Linear(width, embed_dim)`` per entry of ``--features_list``
(``fc.{i}.weight`` ``[embed_dim, width]``, ``fc.{i}.bias`` ``[embed_dim]``), applied to the patch tokens of
the i-th listed layer -> ``heads.{i}`` of zsad's VAND with the same ``feature_layers`` (their released
files: 6, 12, 18, 24 of ViT-L-14-336 at 518 px, trained with exact GELU, zsad's ``activation: authors``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state, official_entries

FORMAT = "the VAND authors' linear layers"
_HEAD = re.compile(r"fc\.(\d+)\.(weight|bias)")


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.heads.*``) from ``{"trainable_linearlayer": state_dict}``."""
    layers = official_entries(checkpoint, "trainable_linearlayer", source, FORMAT)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in layers.items():
        match = _HEAD.fullmatch(key)
        if match is None:
            raise ZsadError(f"{source} ({FORMAT}): unexpected entry '{key}' in trainable_linearlayer")
        state[f"model.heads.{match.group(1)}.{match.group(2)}"] = tensor
    return checked_official_state(module, state, source, FORMAT)
