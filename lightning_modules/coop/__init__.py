"""CoOp: learnable class-aware prompt context on a frozen CLIP, trained with image labels only."""

from lightning_modules.coop.config import CoOpConfig
from lightning_modules.coop.model import ClassAwareContext, CoOp
from lightning_modules.coop.module import CoOpModule
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="coop",
        config_class=CoOpConfig,
        build_module=lambda cfg, eval_cfg: CoOpModule(cfg, eval_cfg),
        trains=True,
        needs="image labels of the auxiliary data (no masks)",
        description="CoOp: '[V1..Vn] normal/anomalous [cls].' context shared by all classes, image loss only",
        tiny_config="coop_tiny",
    )
)

__all__ = ["ClassAwareContext", "CoOp", "CoOpConfig", "CoOpModule"]
