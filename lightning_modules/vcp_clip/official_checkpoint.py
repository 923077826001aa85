"""The VCP-CLIP authors' checkpoints as zsad's trainable state.

Their train.py saves, per epoch, ``{"trainable_linearlayer": ..., "New_Lan_Embed": ..., "Zero_try": ...}``
plus every CLIP parameter whose name contains "prompt" at the top level (``save_dict.update(model_optim)``);
the released ``train_visa.pth`` / ``train_mvtec.pth`` (Google Drive links in their README, trained with seed
333) are such files. For vision width ``W``, text width ``w``, ``r`` = ``--prompt_len``, ``n`` =
``--deep_prompt_len`` and ``T`` text blocks:

| their entry | shape | zsad parameter (``model.``) |
|---|---|---|
| ``trainable_linearlayer.fc.{i}.weight`` / ``.bias`` | ``[w, W]`` / ``[w]`` | ``heads.{i}.*`` (i-th feature layer) |
| ``New_Lan_Embed.prompt_query`` | ``[1, r, w]`` | ``pre_vcp.query`` |
| ``New_Lan_Embed.prompt_linear1.fc.weight`` / ``.bias`` | ``[r, 1, 3]`` / ``[r]`` | ``pre_vcp.conv.*`` |
| ``New_Lan_Embed.prompt_temp`` | ``[]`` | ``pre_log_scale`` |
| ``Zero_try.{q_proj_pre, k_proj_pre_1, v_proj_pre_1, proj_post_t}.weight`` | ``[W, in, 1]`` (1x1 Conv1d) | ``post_vcp.{query, key, value, out}.weight`` ``[W, in]`` |
| ``Zero_try.*.bias`` | ``[W]`` | ``post_vcp.*.bias`` |
| ``Zero_try.prompt_temp_l1`` | ``[]`` | ``post_log_scale`` |
| ``prompt_embeddings`` / ``deep_prompt_embeddings`` | ``[1, n, w]`` / ``[T - 1, n, w]`` | ``deep_prompts.shallow`` / ``.deep`` |
| ``prompt_proj.weight`` / ``.bias``, ``prompt_norm.weight`` / ``.bias`` | ``[w, w]``, ``[w]`` | ``deep_prompts.proj.*``, ``deep_prompts.norm.*`` |
| ``prompt_text_projection`` | ``[w, D]`` | never used by their forward; ignored |
"""

from __future__ import annotations

import re
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state, official_entries

FORMAT = "the VCP-CLIP authors' checkpoint"
_POST = {"q_proj_pre": "query", "k_proj_pre_1": "key", "v_proj_pre_1": "value", "proj_post_t": "out"}
_TOP_LEVEL = {
    "prompt_embeddings": "deep_prompts.shallow",
    "deep_prompt_embeddings": "deep_prompts.deep",
    "prompt_proj.weight": "deep_prompts.proj.weight",
    "prompt_proj.bias": "deep_prompts.proj.bias",
    "prompt_norm.weight": "deep_prompts.norm.weight",
    "prompt_norm.bias": "deep_prompts.norm.bias",
}
_IGNORED = {"prompt_text_projection"}
_SECTIONS = ("trainable_linearlayer", "New_Lan_Embed", "Zero_try")


def _linear_layers(entries: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in entries.items():
        match = re.fullmatch(r"fc\.(\d+)\.(weight|bias)", key)
        if match is None:
            raise ZsadError(f"unexpected entry 'trainable_linearlayer.{key}'")
        state[f"heads.{match.group(1)}.{match.group(2)}"] = tensor
    return state


def _pre_vcp(entries: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {
        "prompt_query": "pre_vcp.query",
        "prompt_linear1.fc.weight": "pre_vcp.conv.weight",
        "prompt_linear1.fc.bias": "pre_vcp.conv.bias",
        "prompt_temp": "pre_log_scale",
    }
    unknown = sorted(set(entries) - set(names))
    if unknown:
        raise ZsadError(f"unexpected entry 'New_Lan_Embed.{unknown[0]}'")
    return {names[key]: tensor for key, tensor in entries.items()}


def _post_vcp(entries: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in entries.items():
        if key == "prompt_temp_l1":
            state["post_log_scale"] = tensor
            continue
        layer, _, kind = key.partition(".")
        if layer not in _POST or kind not in ("weight", "bias"):
            raise ZsadError(f"unexpected entry 'Zero_try.{key}'")
        if kind == "weight":
            if tensor.ndim != 3 or tensor.shape[-1] != 1:
                raise ZsadError(
                    f"Zero_try.{key} has shape {tuple(tensor.shape)}, expected a 1x1 Conv1d [out, in, 1]"
                )
            tensor = tensor[..., 0]
        state[f"post_vcp.{_POST[layer]}.{kind}"] = tensor
    return state


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.*``) from the authors' ``save_dict``; every name and shape checked."""
    sections = [official_entries(checkpoint, key, source, FORMAT) for key in _SECTIONS]
    try:
        state = _linear_layers(sections[0]) | _pre_vcp(sections[1]) | _post_vcp(sections[2])
        for key, tensor in checkpoint.items():
            if key in _SECTIONS or key in _IGNORED:
                continue
            if key not in _TOP_LEVEL:
                raise ZsadError(f"unexpected entry '{key}'")
            state[_TOP_LEVEL[key]] = tensor
    except ZsadError as error:
        raise ZsadError(f"{source} ({FORMAT}): {error}") from None
    tensors = {f"model.{name}": torch.as_tensor(tensor).detach().float() for name, tensor in state.items()}
    return checked_official_state(module, tensors, source, FORMAT)
