"""VAND / APRIL-GAN: linear heads on raw multi-layer CLIP tokens, trained on auxiliary data with masks."""

from lightning_modules.registry import MethodSpec, register_method
from lightning_modules.vand.config import VANDConfig
from lightning_modules.vand.model import VAND, VANDOutput
from lightning_modules.vand.module import VANDModule

register_method(
    MethodSpec(
        name="vand",
        config_class=VANDConfig,
        build_module=lambda cfg, eval_cfg: VANDModule(cfg, eval_cfg),
        trains=True,
        needs="pixel masks of the auxiliary data (no image loss)",
        description="APRIL-GAN: linear layers on raw tokens of blocks 6/12/18/24, focal + Dice, mosaic option",
        tiny_config="vand_tiny",
    )
)

__all__ = ["VAND", "VANDConfig", "VANDModule", "VANDOutput"]
