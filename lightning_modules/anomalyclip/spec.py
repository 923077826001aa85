"""AnomalyCLIP's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builders."""

from __future__ import annotations

from typing import Any

from lightning_modules.anomalyclip.config import AnomalyCLIPConfig
from lightning_modules.method_spec import (
    OPENAI_VIT_L14_336,
    MeasuredAt,
    MethodSpec,
    cache_settings,
)
from lightning_modules.published import anomalyclip_paper


def build_module(cfg: AnomalyCLIPConfig, eval_cfg: Any) -> Any:
    from lightning_modules.anomalyclip.module import AnomalyCLIPModule

    return AnomalyCLIPModule(cfg, eval_cfg)


def read_official_checkpoint(module: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """The authors' ``{"prompt_learner": ...}`` files (official_checkpoint.py)."""
    from lightning_modules.anomalyclip.official_checkpoint import zsad_state_dict

    return zsad_state_dict(module, checkpoint, source)


ANOMALYCLIP = MethodSpec(
    name="anomalyclip",
    config_class=AnomalyCLIPConfig,
    description="object-agnostic prompts + deep text tokens + DPAM on a frozen CLIP (ICLR 2024)",
    tiny_config="anomalyclip_tiny",
    build_module=build_module,
    trains=True,
    needs="image labels; pixel masks optional (image loss only without them)",
    feature_cache=cache_settings,
    official_checkpoint=read_official_checkpoint,
    published=anomalyclip_paper("anomalyclip"),
    # the paper's numbers beside the authors' settings only (the config's defaults; caches change nothing)
    published_at=MeasuredAt(files=OPENAI_VIT_L14_336),
)
