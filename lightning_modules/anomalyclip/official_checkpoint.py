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

FAPrompt's prompt learner is saved the same way with other prompt vectors; :func:`prompt_learner_state`
reads what the two share (deep tokens, ignored entries, token ids) for both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state, official_entries

FORMAT = "the AnomalyCLIP authors' prompt learner"
_IGNORED = re.compile(r"compound_prompt_projections\.\d+\.(weight|bias)|token_(prefix|suffix)_(pos|neg)")
_DEEP = re.compile(r"compound_prompts_text\.(\d+)")


def prompt_learner_state(
    module: ZeroShotModule,
    checkpoint: dict[str, Any],
    source: str,
    what: str,
    convert: Callable[[str, torch.Tensor], tuple[str, torch.Tensor] | None],
    token_ids: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """zsad's trainable state from ``{"prompt_learner": state_dict}`` of a learner built on AnomalyCLIP's
    code (``what`` names its authors' format): the deep tokens, the ignored entries and the token ids
    (``token_ids``: their entry -> zsad's ids, checked) are common; ``convert(key, tensor)`` maps every other
    entry to ``(zsad parameter, tensor)``, or None for an entry it does not know."""
    learner = official_entries(checkpoint, "prompt_learner", source, what)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in learner.items():
        if _IGNORED.fullmatch(key):
            continue
        if match := _DEEP.fullmatch(key):
            state[f"model.prompts.deep_tokens.{match.group(1)}"] = tensor
        elif key in token_ids:
            ours = token_ids[key].cpu()
            if tensor.numel() != ours.numel() or not torch.equal(
                tensor.reshape(-1).long(), ours.reshape(-1).long()
            ):
                raise ZsadError(
                    f"{source} ({what}): its {key} differ from zsad's token ids ({ours.numel()}); "
                    "the method's prompt lengths must match the checkpoint's"
                )
        elif (converted := convert(key, tensor)) is not None:
            state[converted[0]] = converted[1]
        else:
            raise ZsadError(f"{source} ({what}): unexpected entry '{key}' in prompt_learner")
    blocks = module.cfg.deep_prompt_blocks
    if blocks and blocks[0] != 2:
        raise ZsadError(
            f"{source} ({what}): the authors' deep tokens start at text block 2, but "
            f"method.deep_prompt_blocks starts at {blocks[0]}"
        )
    return checked_official_state(module, state, source, what)


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.prompts.*``) from ``{"prompt_learner": state_dict}``."""

    def convert(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        if key not in ("ctx_pos", "ctx_neg"):
            return None
        if tensor.ndim != 4 or tuple(tensor.shape[:2]) != (1, 1):
            raise ZsadError(
                f"{source} ({FORMAT}): {key} has shape {tuple(tensor.shape)}, expected [1, 1, n_ctx, width] "
                "(one class, one template)"
            )
        return f"model.prompts.{'normal' if key == 'ctx_pos' else 'abnormal'}_context", tensor[0, 0]

    ids = module.model.prompts.token_ids
    token_ids = {"tokenized_prompts_pos": ids[0], "tokenized_prompts_neg": ids[1]}
    return prompt_learner_state(module, checkpoint, source, FORMAT, convert, token_ids)
