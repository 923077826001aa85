"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic prompt learning for zero-shot anomaly detection."""

from lightning_modules.anomalyclip.config import AnomalyCLIPConfig
from lightning_modules.anomalyclip.model import AnomalyCLIP, ObjectAgnosticPrompts
from lightning_modules.anomalyclip.module import AnomalyCLIPModule
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="anomalyclip",
        config_class=AnomalyCLIPConfig,
        build_module=lambda cfg, eval_cfg: AnomalyCLIPModule(cfg, eval_cfg),
        trains=True,
        needs="image labels; pixel masks optional (image loss only without them)",
        description="object-agnostic prompts + deep text tokens + DPAM on a frozen CLIP (ICLR 2024)",
        tiny_config="anomalyclip_tiny",
    )
)

__all__ = ["AnomalyCLIP", "AnomalyCLIPConfig", "AnomalyCLIPModule", "ObjectAgnosticPrompts"]
