"""The AA-CLIP authors' checkpoints as zsad's trainable state. They have released none (their issues 20, 26,
45); this reads what their train.py writes into ``--save_path``: ``text_adapter.pth`` (``{"epoch",
"text_adapter", "text_optimizer"}``) once, and ``image_adapter_{epoch}.pth`` (``{"epoch", "image_adapter",
"image_optimizer"}``) after every stage-2 epoch. Their test.py loads the text file and each image file of
the folder; zsad takes the image file of one epoch (``checkpoint=.../image_adapter_20.pth``) and the
``text_adapter.pth`` beside it.

zsad's adapters keep their module names (:class:`~lightning_modules.aa_clip.model.AAClipAdapters`), so
``text_adapter.{i}.fc.0.weight`` is ``model.adapters.text_adapter.{i}.fc.0.weight`` and
``layer_adapters`` / ``seg_proj`` / ``det_proj`` are under ``model.adapters.image_adapter``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule, checked_official_state, official_entries
from lightning_modules.checkpoint_io import read_checkpoint

FORMAT = "the AA-CLIP authors' image_adapter_{epoch}.pth"
TEXT_FILE = "text_adapter.pth"


def zsad_state_dict(
    module: ZeroShotModule, checkpoint: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """zsad's trainable state (``model.adapters.*``) from their image file and the text file beside it."""
    image = official_entries(checkpoint, "image_adapter", source, FORMAT)
    text_path = Path(source).with_name(TEXT_FILE)
    if not text_path.is_file():
        raise ZsadError(
            f"{source} ({FORMAT}) needs the {TEXT_FILE} their train.py writes beside it, and {text_path} is "
            "missing: copy it next to the image-adapter file"
        )
    text_checkpoint = read_checkpoint(text_path)
    if not isinstance(text_checkpoint, dict):
        raise ZsadError(f"{text_path} is not the AA-CLIP authors' {TEXT_FILE} (not a dict)")
    text = official_entries(
        text_checkpoint, "text_adapter", str(text_path), f"the AA-CLIP authors' {TEXT_FILE}"
    )
    state = {f"model.adapters.image_adapter.{key}": tensor for key, tensor in image.items()}
    state |= {f"model.adapters.text_adapter.{key}": tensor for key, tensor in text.items()}
    return checked_official_state(module, state, source, FORMAT)
