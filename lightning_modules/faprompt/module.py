"""FAPrompt training and batched evaluation in Lightning: AnomalyCLIP's module (only the prompt learner
trains, the frozen image features are cached) with FAPrompt's model."""

from __future__ import annotations

from lightning_modules.anomalyclip.module import AnomalyCLIPBaseModule
from lightning_modules.faprompt.model import FAPrompt


class FAPromptModule(AnomalyCLIPBaseModule):
    method_name = "faprompt"
    model_class = FAPrompt
    shape_keys = (
        "normal_prompt_length",
        "abnormal_prompt_length",
        "num_abnormal_prompts",
        "deep_prompt_length",
        "deep_prompt_blocks",
        "prior_tokens",
        "prior_reduction",
    )
