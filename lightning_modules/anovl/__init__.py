"""AnoVL (Deng et al., arXiv 2308.15939): domain-aware state prompts, V-V tokens and test-time adaptation
on a frozen CLIP; training-free. Also the text branch and TTA of the dual-image method."""

from lightning_modules.anovl.config import AnoVLConfig, TTAConfig
from lightning_modules.anovl.model import AnoVL, BatchText, CategoryText
from lightning_modules.anovl.module import AnoVLModule
from lightning_modules.anovl.tta import SyntheticAnomalies, TestTimeAdaptation, TextAdapter
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="anovl",
        config_class=AnoVLConfig,
        build_module=lambda cfg, eval_cfg: AnoVLModule(cfg, eval_cfg),
        trains=False,
        needs="nothing: training-free (test images only)",
        description="domain-aware state prompts + V-V tokens + per-image test-time adaptation (AnoVL)",
        dataset_protocol=AnoVLModule.protocol_on,
        tiny_config="anovl_tiny",
        ddp_refusal=AnoVLModule.ddp_refusal,
    )
)

__all__ = [
    "AnoVL",
    "AnoVLConfig",
    "AnoVLModule",
    "BatchText",
    "CategoryText",
    "SyntheticAnomalies",
    "TTAConfig",
    "TestTimeAdaptation",
    "TextAdapter",
]
