"""The AnomalyCLIP authors' prompt checkpoints (``torch.save({"prompt_learner": state_dict})`` in their
train.py, e.g. ``checkpoints/9_12_4_multiscale/epoch_15.pth``) as zsad's trainable state.

Their ``AnomalyCLIP_PromptLearner`` holds, for ``Prompt_length`` n, ``learnabel_text_embedding_length`` k,
``learnabel_text_embedding_depth`` d and text width w:

- ``ctx_pos`` / ``ctx_neg`` ``[1, 1, n, w]``: the vectors before "object." / "damaged object." (one class,
  one template) -> ``prompts.normal_context`` / ``prompts.abnormal_context`` ``[n, w]``;
- ``compound_prompts_text.{j}`` ``[k, w]``, j < d - 1: the deep tokens of text block j + 2 ->
  ``prompts.deep_tokens.{j}`` (zsad's ``deep_prompt_blocks`` must start at 2 and have d - 1 blocks);
- ``compound_prompt_projections.{j}`` (``Linear(w, 896)``): created but never used by their forward; ignored;
- buffers ``token_prefix_*`` / ``token_suffix_*`` (token embeddings zsad recomputes from CLIP) and
  ``tokenized_prompts_pos/neg`` ``[1, 1, 77]``, which must equal zsad's token ids (same prompt words).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state, official_entries

FORMAT = "the AnomalyCLIP authors' prompt learner"
_IGNORED = re.compile(r"compound_prompt_projections\.\d+\.(weight|bias)|token_(prefix|suffix)_(pos|neg)")
_DEEP = re.compile(r"compound_prompts_text\.(\d+)")


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.prompts.*``) from ``{"prompt_learner": state_dict}``."""
    learner = official_entries(checkpoint, "prompt_learner", source, FORMAT)
    prompts = module.model.prompts
    state: dict[str, torch.Tensor] = {}
    for key, tensor in learner.items():
        if _IGNORED.fullmatch(key):
            continue
        if key in ("ctx_pos", "ctx_neg"):
            if tensor.ndim != 4 or tuple(tensor.shape[:2]) != (1, 1):
                raise ZsadError(
                    f"{source} ({FORMAT}): {key} has shape {tuple(tensor.shape)}, expected [1, 1, n_ctx, width] "
                    "(one class, one template)"
                )
            name = "normal_context" if key == "ctx_pos" else "abnormal_context"
            state[f"model.prompts.{name}"] = tensor[0, 0]
        elif match := _DEEP.fullmatch(key):
            state[f"model.prompts.deep_tokens.{match.group(1)}"] = tensor
        elif key in ("tokenized_prompts_pos", "tokenized_prompts_neg"):
            row = 0 if key.endswith("pos") else 1
            ours = prompts.token_ids[row].cpu()
            if tensor.numel() != ours.numel() or not torch.equal(tensor.reshape(-1).long(), ours.long()):
                raise ZsadError(
                    f"{source} ({FORMAT}): its {'normal' if row == 0 else 'abnormal'} prompt tokens differ from "
                    f"zsad's ({ours.numel()} ids); method.prompt_length must match the checkpoint's"
                )
        else:
            raise ZsadError(f"{source} ({FORMAT}): unexpected entry '{key}' in prompt_learner")
    blocks = module.cfg.deep_prompt_blocks
    if blocks and blocks[0] != 2:
        raise ZsadError(
            f"{source} ({FORMAT}): the authors' deep tokens start at text block 2, but "
            f"method.deep_prompt_blocks starts at {blocks[0]}"
        )
    return checked_official_state(module, state, source, FORMAT)
