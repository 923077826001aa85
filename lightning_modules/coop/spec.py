"""CoOp's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.coop.config import CoOpConfig
from lightning_modules.method_spec import (
    OPENAI_VIT_L14_336,
    MeasuredAt,
    MethodSpec,
    cache_settings,
)
from lightning_modules.published import anomalyclip_paper


def build_module(cfg: CoOpConfig, eval_cfg: Any) -> Any:
    from lightning_modules.coop.module import CoOpModule

    return CoOpModule(cfg, eval_cfg)


COOP = MethodSpec(
    name="coop",
    config_class=CoOpConfig,
    description="CoOp: '[V1..Vn] normal/anomalous [cls].' context shared by all classes, image loss only",
    tiny_config="coop_tiny",
    build_module=build_module,
    trains=True,
    needs="image labels of the auxiliary data (no masks)",
    feature_cache=cache_settings,
    published=anomalyclip_paper("coop"),
    # beside zsad's defaults (the reference code's settings) only: not beside a tiny or switched model
    published_at=MeasuredAt(files=OPENAI_VIT_L14_336),
)
