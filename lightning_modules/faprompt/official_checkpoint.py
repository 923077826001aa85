"""The FAPrompt authors' checkpoints (train.py: ``torch.save({"prompt_learner": prompt_learner.state_dict()},
"epoch_N.pth")``) as zsad's trainable state. Their README's link to released weights is empty; this reads
the format their code writes.

Their ``FAPrompt`` prompt learner holds, for text width w, embedding width D, k = 10 prior patches, 5 normal
and 2 abnormal vectors, 10 abnormality prompts and deep tokens as AnomalyCLIP's:

- ``ctx_pos`` ``[1, 1, 5, w]`` -> ``prompts.normal_context`` ``[5, w]``;
- ``ctx_neg`` ``[1, 10, 2, w]`` -> ``prompts.abnormal_context`` ``[10, 2, w]``;
- ``patch_meta_net.linear1`` ``Linear(k D, k D / 16)``, ``.linear2`` ``Linear(k D / 16, w)`` ->
  ``prompts.meta_net.linear1`` / ``.linear2`` (their code writes D as 768, ViT-L-14's width);
- ``compound_prompts_text.{j}``, ``compound_prompt_projections.{j}`` (unused), ``token_prefix_*`` /
  ``token_suffix_*`` as AnomalyCLIP's (:func:`~lightning_modules.anomalyclip.official_checkpoint.prompt_learner_state`);
- ``tokenized_prompts_pos`` ``[1, 1, 77]`` and ``tokenized_prompts_neg`` ``[1, 10, 77]``: must equal zsad's
  token ids of ``N N N N N object.`` and (ten times) ``N N N N N A A damaged object.``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.anomalyclip.official_checkpoint import prompt_learner_state
from lightning_modules.base import ZeroShotModule

FORMAT = "the FAPrompt authors' prompt learner"
_META = re.compile(r"patch_meta_net\.(linear[12]\.(weight|bias))")


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.prompts.*``) from ``{"prompt_learner": state_dict}``."""
    prompts = module.model.prompts

    def convert(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        if match := _META.fullmatch(key):
            return f"model.prompts.meta_net.{match.group(1)}", tensor
        if key not in ("ctx_pos", "ctx_neg"):
            return None
        if tensor.ndim != 4 or tensor.shape[0] != 1 or (key == "ctx_pos" and tensor.shape[1] != 1):
            expected = "[1, 1, n_ctx_pos, width]" if key == "ctx_pos" else "[1, num_p, n_ctx_neg, width]"
            raise ZsadError(
                f"{source} ({FORMAT}): {key} has shape {tuple(tensor.shape)}, expected {expected}"
            )
        if key == "ctx_pos":
            return "model.prompts.normal_context", tensor[0, 0]
        return "model.prompts.abnormal_context", tensor[0]

    token_ids = {
        "tokenized_prompts_pos": prompts.token_ids[0],
        "tokenized_prompts_neg": prompts.token_ids[1].expand(prompts.num_abnormal, -1),
    }
    return prompt_learner_state(module, checkpoint, source, FORMAT, convert, token_ids)
