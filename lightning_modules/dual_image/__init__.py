"""Dual-Image Enhanced CLIP (Zhang et al., arXiv 2405.04782): test images of a category as each other's
visual reference, a joint vision-language score and test-time adaptation with synthesized anomalies,
on AnoVL's text branch; training-free. Beyond AnoVL the method is a documented reconstruction."""

from lightning_modules.dual_image.config import DualImageConfig, DualImageTTAConfig, VisualReferenceConfig
from lightning_modules.dual_image.model import DualImageCLIP
from lightning_modules.dual_image.module import DualImageModule, ReferenceBank
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="dual_image",
        config_class=DualImageConfig,
        build_module=lambda cfg, eval_cfg: DualImageModule(cfg, eval_cfg),
        trains=False,
        needs="nothing: training-free (the other test images of each category are the visual references)",
        description="AnoVL text branch + same-category test images as visual references + TTA (DIE-CLIP)",
        dataset_protocol=DualImageModule.protocol_on,
        tiny_config="dual_image_tiny",
        ddp_refusal=DualImageModule.ddp_refusal,
    )
)

__all__ = [
    "DualImageCLIP",
    "DualImageConfig",
    "DualImageModule",
    "DualImageTTAConfig",
    "ReferenceBank",
    "VisualReferenceConfig",
]
