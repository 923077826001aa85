"""CLIP's and CLIP-AC's contracts with zsad (lightning_modules/method_spec.py): one module, two methods that
differ in the prompt ensemble; light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.clip_zero_shot.config import CLIPACConfig, CLIPConfig
from lightning_modules.method_spec import OPENAI_VIT_L14_336, MeasuredAt, MethodSpec
from lightning_modules.published import anomalyclip_paper


def build_module(cfg: CLIPConfig, eval_cfg: Any) -> Any:
    from lightning_modules.clip_zero_shot.module import CLIPZeroShotModule

    return CLIPZeroShotModule(cfg, eval_cfg)


CLIP = MethodSpec(
    name="clip",
    config_class=CLIPConfig,
    description="frozen CLIP, 'a photo of a normal/an anomalous [cls].', maps from last-layer tokens",
    tiny_config="clip_tiny",
    build_module=build_module,
    trains=False,
    needs="nothing to train on (category names for the prompts)",
    published=anomalyclip_paper("clip"),
    # beside zsad's defaults (the reference code's settings) only: not beside a tiny or switched model
    published_at=MeasuredAt(files=OPENAI_VIT_L14_336),
)

CLIP_AC = MethodSpec(
    name="clip_ac",
    config_class=CLIPACConfig,
    description="CLIP with CLIP's ImageNet prompt ensemble: 'normal/anomalous [cls]' in 80 templates, averaged "
    "per class (reconstruction)",
    tiny_config="clip_ac_tiny",
    build_module=build_module,
    trains=False,
    needs="nothing to train on (category names for the prompts)",
    published=anomalyclip_paper("clip_ac"),
    # beside zsad's defaults (the reference code's settings) only: not beside a tiny or switched model
    published_at=MeasuredAt(files=OPENAI_VIT_L14_336),
)
