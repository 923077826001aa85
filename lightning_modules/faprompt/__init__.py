"""FAPrompt (Zhu et al., ICCV 2025): fine-grained abnormality prompts (compound abnormality prompting and a
data-dependent abnormality prior) on AnomalyCLIP's frozen CLIP.

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.faprompt.config import FAPromptConfig

__all__ = ["CompoundAbnormalityPrompts", "FAPrompt", "FAPromptConfig", "FAPromptModule"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.faprompt.model import CompoundAbnormalityPrompts, FAPrompt
    from lightning_modules.faprompt.module import FAPromptModule

    return {
        "CompoundAbnormalityPrompts": CompoundAbnormalityPrompts,
        "FAPrompt": FAPrompt,
        "FAPromptModule": FAPromptModule,
    }[name]
