"""The AdaCLIP authors' checkpoints (``AdaCLIP_Trainer.save``: ``torch.save`` of the trainer's state-dict
entries whose names contain a learnable module's name; released as ``pretrained_mvtec_colondb.pth``,
``pretrained_visa_clinicdb.pth`` and ``pretrained_all.pth``) as zsad's trainable state.

A flat dict, names under ``clip_model.`` (docs/methods.md#adaclip has the table):

- ``text_prompter.static_prompts.{j}`` ``[length, embed]``, j < depth: the static prompt of text block j + 1
  -> ``prompts.text_static.{j - 1}`` (their block-1 entry, j = 0, is never used by their forward: ignored);
- ``visual_prompter.static_prompts.{j}`` ``[length, width]`` -> ``prompts.visual_static.{j}``;
- ``patch_token_layer.head.{i}`` ``Linear(width, embed)`` -> ``prompts.patch_heads.{i}`` (i-th map layer);
- ``cls_token_layer.head.0`` ``Linear(embed, embed)`` -> ``prompts.cls_head``;
- ``dynamic_visual_prompt_generator.head.{t}`` / ``dynamic_text_prompt_generator.head.{t}``
  ``Linear(embed, width)`` -> ``prompts.dynamic_visual.{t}`` / ``prompts.dynamic_text.{t}``.

Entries their forward never reads in the configured setting (a generator or static prompt of a branch without
prompts, static prompts of blocks the tower does not have) are ignored; everything else must fit by name
and shape.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state

FORMAT = "the AdaCLIP authors' checkpoint"
_STATIC = re.compile(r"clip_model\.(text|visual)_prompter\.static_prompts\.(\d+)")
_LINEAR = re.compile(
    r"clip_model\.(patch_token_layer|cls_token_layer|dynamic_visual_prompt_generator|"
    r"dynamic_text_prompt_generator)\.head\.(\d+)\.(weight|bias)"
)
_ZSAD_LINEAR = {
    "patch_token_layer": "patch_heads",
    "dynamic_visual_prompt_generator": "dynamic_visual",
    "dynamic_text_prompt_generator": "dynamic_text",
}


def is_authors_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return any(isinstance(k, str) and k.startswith("clip_model.") for k in checkpoint)


def _static_name(prompts: Any, tower: str, index: int) -> str | None:
    """zsad's name for their static prompt ``index`` of ``tower``, None where their forward never uses it."""
    if tower == "text":
        used = prompts.text_static is not None and 1 <= index <= prompts.text_blocks
        return f"text_static.{index - 1}" if used else None
    used = prompts.visual_static is not None and index < prompts.vision_blocks
    return f"visual_static.{index}" if used else None


def _linear_name(prompts: Any, module: str, index: int, kind: str) -> str | None:
    if module == "cls_token_layer":
        return f"cls_head.{kind}" if index == 0 else None
    name = _ZSAD_LINEAR[module]
    return f"{name}.{index}.{kind}" if getattr(prompts, name) is not None else None


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.prompts.*``) from the authors' flat ``clip_model.*`` dict."""
    if not is_authors_checkpoint(checkpoint):
        raise ZsadError(
            f"{source} is neither a zsad checkpoint (no 'state_dict') nor {FORMAT} (no 'clip_model.*' "
            f"entries); its keys: {sorted(map(str, checkpoint))[:5]}"
        )
    prompts = module.model.prompts
    depth = module.cfg.prompting_depth
    state: dict[str, torch.Tensor] = {}
    statics: dict[str, int] = {"text": 0, "visual": 0}
    generators: set[int] = set()
    for key, tensor in checkpoint.items():
        if match := _STATIC.fullmatch(key):
            tower, index = match.group(1), int(match.group(2))
            statics[tower] += 1
            name = _static_name(prompts, tower, index)
        elif match := _LINEAR.fullmatch(key):
            if match.group(1).startswith("dynamic"):
                generators.add(int(match.group(2)))
            name = _linear_name(prompts, match.group(1), int(match.group(2)), match.group(3))
        else:
            raise ZsadError(f"{source} ({FORMAT}): unexpected entry '{key}'")
        if name is not None:
            state[f"model.prompts.{name}"] = tensor
    for tower, count in statics.items():
        if count and count != depth:
            raise ZsadError(
                f"{source} ({FORMAT}): {count} {tower} static prompts, but method.prompting_depth is {depth}; "
                "set it as the checkpoint was trained"
            )
    cfg = module.cfg
    kinds = {
        "dynamic prompt generators (prompting_type with D)": (bool(generators), "D" in cfg.prompting_type),
        "text static prompts (S, branch with L)": (
            statics["text"] > 0,
            "S" in cfg.prompting_type and "L" in cfg.prompting_branch,
        ),
        "visual static prompts (S, branch with V)": (
            statics["visual"] > 0,
            "S" in cfg.prompting_type and "V" in cfg.prompting_branch,
        ),
    }
    for kind, (in_file, configured) in kinds.items():
        if in_file != configured:
            raise ZsadError(
                f"{source} ({FORMAT}) {'has' if in_file else 'has no'} {kind}, but method.prompting_type="
                f"{cfg.prompting_type!r} / prompting_branch={cfg.prompting_branch!r} "
                f"{'do not use them' if in_file else 'need them'}; set them as the checkpoint was trained"
            )
    length = cfg.prompting_length
    if generators and len(generators) != length:
        raise ZsadError(
            f"{source} ({FORMAT}): {len(generators)} dynamic prompt tokens, but method.prompting_length is "
            f"{length}; set it as the checkpoint was trained"
        )
    return checked_official_state(module, state, source, FORMAT)
