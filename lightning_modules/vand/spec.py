"""VAND's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builders."""

from __future__ import annotations

from typing import Any

from lightning_modules.method_spec import (
    FEW_SHOT,
    OPENAI_VIT_L14_336,
    ZERO_SHOT,
    MeasuredAt,
    MethodSpec,
    cache_settings,
)
from lightning_modules.published import anomalyclip_paper
from lightning_modules.vand.config import VANDConfig


def build_module(cfg: VANDConfig, eval_cfg: Any) -> Any:
    from lightning_modules.vand.module import VANDModule

    return VANDModule(cfg, eval_cfg)


def read_official_checkpoint(module: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """The authors' ``{"trainable_linearlayer": ...}`` files (official_checkpoint.py)."""
    from lightning_modules.vand.official_checkpoint import zsad_state_dict

    return zsad_state_dict(module, checkpoint, source)


VAND = MethodSpec(
    name="vand",
    config_class=VANDConfig,
    description="APRIL-GAN: linear layers on raw tokens of blocks 6/12/18/24, focal + Dice, mosaic option",
    tiny_config="vand_tiny",
    build_module=build_module,
    trains=True,
    needs="pixel masks of the auxiliary data (no image loss)",
    feature_cache=cache_settings,
    official_checkpoint=read_official_checkpoint,
    protocols=(ZERO_SHOT, FEW_SHOT),  # test.py --mode few_shot: the memory bank of K normal images
    published=anomalyclip_paper("vand"),
    # beside the authors' settings only: the defaults, with the mosaic off as their VisA training sets it
    published_at=MeasuredAt(files=OPENAI_VIT_L14_336, also={"mosaic_rate": (0.0,)}),
)
