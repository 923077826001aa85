"""The Bayes-PFL authors' checkpoints (``torch.save({"MyModel": MyModel.state_dict()})`` in their train.py,
e.g. the released ``train_visa.pth`` / ``train_mvtec.pth``) as zsad's trainable state.

Their ``Context_Prompting`` registers some modules twice (``PFL_context.encoder`` is ``context_encoder``,
``PFL_normal.encoder`` and ``PFL_abnormal.encoder`` are ``state_encoder``), so its state dict holds copies;
zsad reads the first name. Entries that no output depends on are ignored: the decoders and ``p_mu`` (their
reconstruction term was dropped from the loss) and those copies. A Conv1d of kernel 1 (``RCA.q_proj_pre``)
is stored ``[C, C, 1]``, as zsad's.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state, official_entries

FORMAT = "the Bayes-PFL authors' MyModel state"
_IGNORED = re.compile(
    r"(context|state)_decoder\..*|PFL_(context|normal|abnormal)\.(encoder|decoder|p_mu)\..*"
)
_RENAMES = (
    (re.compile(r"context_encoder\.weight_mean\.module\.(.*)"), r"context_flow.posterior.mean.\1"),
    (
        re.compile(r"context_encoder\.weight_log_variance\.module\.(.*)"),
        r"context_flow.posterior.log_variance.\1",
    ),
    (re.compile(r"state_encoder\.weight_mean\.module\.(.*)"), r"state_posterior.mean.\1"),
    (re.compile(r"state_encoder\.weight_log_variance\.module\.(.*)"), r"state_posterior.log_variance.\1"),
    (re.compile(r"PFL_context\.(amor_[uwb]\..*)"), r"context_flow.\1"),
    (re.compile(r"PFL_normal\.(amor_[uwb]|state)"), r"normal_flow.\1"),
    (re.compile(r"PFL_abnormal\.(amor_[uwb]|state)"), r"abnormal_flow.\1"),
    (re.compile(r"RCA\.q_proj_pre\.(.*)"), r"rca.query.\1"),
    (re.compile(r"RCA\.linear_proj\.(.*)"), r"rca.patch_projections.\1"),
    (
        re.compile(
            r"((prompt_context|prompt_state_normal|prompt_state_abnormal|temperature_pixel|temperature_image)"
            r"|(fuse|class_mapping|image_mapping)\..*)"
        ),
        r"\1",
    ),
)
#: the stage of the image-score head the authors' released files were trained to (test.py: a file not named
#: ``epoch_post_{epoch}_{stage}.pth`` is tested with stage 2)
OFFICIAL_STAGE = 2


def zsad_name(key: str) -> str | None:
    """zsad's parameter name (without ``model.``) of one of their keys; None for an ignored entry."""
    if _IGNORED.fullmatch(key):
        return None
    for pattern, replacement in _RENAMES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    raise KeyError(key)


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.*``) from ``{"MyModel": state_dict}``."""
    entries = official_entries(checkpoint, "MyModel", source, FORMAT)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in entries.items():
        try:
            name = zsad_name(key)
        except KeyError:
            raise ZsadError(f"{source} ({FORMAT}): unexpected entry '{key}' in MyModel") from None
        if name is not None:
            state[f"model.{name}"] = tensor
    return checked_official_state(module, state, source, FORMAT)
