"""FAPrompt's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builders."""

from __future__ import annotations

from typing import Any

from lightning_modules.faprompt.config import FAPromptConfig
from lightning_modules.method_spec import MethodSpec, cache_settings


def build_module(cfg: FAPromptConfig, eval_cfg: Any) -> Any:
    from lightning_modules.faprompt.module import FAPromptModule

    return FAPromptModule(cfg, eval_cfg)


def read_official_checkpoint(module: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """The authors' ``{"prompt_learner": ...}`` files, as their train.py saves them (official_checkpoint.py)."""
    from lightning_modules.faprompt.official_checkpoint import zsad_state_dict

    return zsad_state_dict(module, checkpoint, source)


FAPROMPT = MethodSpec(
    name="faprompt",
    config_class=FAPromptConfig,
    description="compound abnormality prompts + data-dependent abnormality prior on AnomalyCLIP's CLIP (ICCV 2025)",
    tiny_config="faprompt_tiny",
    build_module=build_module,
    trains=True,
    needs="image labels; pixel masks optional (image losses only without them)",
    feature_cache=cache_settings,
    official_checkpoint=read_official_checkpoint,
)
