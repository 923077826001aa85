"""The AdaptCLIP authors' checkpoints (``torch.save({"textual_learner": ..., "visual_learner": ...,
"pq_learner": ...})`` in their train.py, ``epoch_{e}.pth``; their released files on Hugging Face,
``csgaobb/AdaptCLIP``, are ``.../12_4_128_train_on_{mvtec,visa}_3adapters_batch8/epoch_15.pth``) as zsad's
trainable state (parameters and BatchNorm statistics).

- ``textual_learner``: ``ctx_pos`` / ``ctx_neg`` ``[1, 1, n_ctx, width]`` -> ``textual.normal_context`` /
  ``abnormal_context`` ``[n_ctx, width]``; the buffers ``token_prefix_*`` / ``token_suffix_*`` (token
  embeddings zsad recomputes) are ignored, ``tokenized_prompts_pos/neg`` ``[1, 1, 77]`` must equal zsad's
  token ids ("X * n_ctx ." prompts).
- ``visual_learner``: ``local_adater.fc.*`` (their spelling) / ``global_adapter.fc.*`` -> ``visual.
  local_adapter.fc.*`` / ``visual.global_adapter.fc.*``.
- ``pq_learner``: ``sharebn.{i}.*`` -> ``pq.norms.{i}.*``; ``local_adapter.{i}.*`` / ``global_adapter.{i}.*``
  (one module repeated per layer in their code: every ``i`` holds the same tensors) -> ``pq.local_heads.0.*``
  / ``pq.global_heads.0.*`` (``pq_share_heads: true``, checked equal) or ``.{i}`` (``false``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state, official_entries

FORMAT = "the AdaptCLIP authors' adapters"
_IGNORED = re.compile(r"token_(prefix|suffix)_(pos|neg)")
_HEAD = re.compile(r"(local|global)_adapter\.(\d+)\.(.+)")


def textual_state(
    module: ZeroShotModule, entries: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    ids = module.model.textual.token_ids
    for key, tensor in entries.items():
        if _IGNORED.fullmatch(key):
            continue
        if key in ("tokenized_prompts_pos", "tokenized_prompts_neg"):
            ours = ids[0 if key.endswith("pos") else 1].cpu()
            if tensor.numel() != ours.numel() or not torch.equal(
                tensor.reshape(-1).long(), ours.reshape(-1).long()
            ):
                raise ZsadError(
                    f"{source} ({FORMAT}): its {key} differ from zsad's token ids; method.prompt_length must "
                    "be the checkpoint's n_ctx"
                )
        elif key in ("ctx_pos", "ctx_neg"):
            if tensor.ndim != 4 or tuple(tensor.shape[:2]) != (1, 1):
                raise ZsadError(
                    f"{source} ({FORMAT}): {key} has shape {tuple(tensor.shape)}, expected [1, 1, n_ctx, width]"
                )
            state[f"model.textual.{'normal' if key == 'ctx_pos' else 'abnormal'}_context"] = tensor[0, 0]
        else:
            raise ZsadError(f"{source} ({FORMAT}): unexpected entry '{key}' in textual_learner")
    return state


def visual_state(entries: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in entries.items():
        name = key.replace("local_adater.", "local_adapter.", 1)
        if not name.startswith(("local_adapter.fc.", "global_adapter.fc.")):
            raise ZsadError(f"{source} ({FORMAT}): unexpected entry '{key}' in visual_learner")
        state[f"model.visual.{name}"] = tensor
    return state


def pq_state(
    module: ZeroShotModule, entries: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    share = module.cfg.pq_share_heads
    state: dict[str, torch.Tensor] = {}
    for key, tensor in entries.items():
        if key.startswith("sharebn."):
            state[f"model.pq.norms.{key[len('sharebn.') :]}"] = tensor
        elif match := _HEAD.fullmatch(key):
            kind, layer, rest = match.groups()
            name = f"model.pq.{kind}_heads.{0 if share else layer}.{rest}"
            if share and name in state and not torch.equal(state[name], tensor):
                raise ZsadError(
                    f"{source} ({FORMAT}): its {kind} heads differ between layers (not the authors' shared "
                    "heads); set method.pq_share_heads=false"
                )
            state[name] = tensor
        else:
            raise ZsadError(f"{source} ({FORMAT}): unexpected entry '{key}' in pq_learner")
    return state


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.textual/visual/pq.*``) from the authors' three state dicts."""
    parts = {
        key: official_entries(checkpoint, key, source, FORMAT)
        for key in ("textual_learner", "visual_learner", "pq_learner")
    }
    state = (
        textual_state(module, parts["textual_learner"], source)
        | visual_state(parts["visual_learner"], source)
        | pq_state(module, parts["pq_learner"], source)
    )
    return checked_official_state(module, state, source, FORMAT)
