"""FAPrompt (Zhu et al., ICCV 2025): fine-grained abnormality prompts (compound abnormality prompting and a
data-dependent abnormality prior) on AnomalyCLIP's frozen CLIP."""

from lightning_modules.faprompt.config import FAPromptConfig
from lightning_modules.faprompt.model import CompoundAbnormalityPrompts, FAPrompt
from lightning_modules.faprompt.module import FAPromptModule
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="faprompt",
        config_class=FAPromptConfig,
        build_module=lambda cfg, eval_cfg: FAPromptModule(cfg, eval_cfg),
        trains=True,
        needs="image labels; pixel masks optional (image losses only without them)",
        description="compound abnormality prompts + data-dependent abnormality prior on AnomalyCLIP's CLIP (ICCV 2025)",
    )
)

__all__ = ["CompoundAbnormalityPrompts", "FAPrompt", "FAPromptConfig", "FAPromptModule"]
