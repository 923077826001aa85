"""WinCLIP (CVPR 2023), zero-shot: compositional prompts, multi-scale windows, harmonic aggregation."""

from lightning_modules.registry import MethodSpec, register_method
from lightning_modules.winclip.config import WinCLIPConfig
from lightning_modules.winclip.model import WinCLIP
from lightning_modules.winclip.module import WinCLIPModule

register_method(
    MethodSpec(
        name="winclip",
        config_class=WinCLIPConfig,
        build_module=lambda cfg, eval_cfg: WinCLIPModule(cfg, eval_cfg),
        trains=False,
        needs="nothing to train on (category names for the prompts)",
        description="compositional prompt ensemble, 2x2/3x3 windows through the ViT, harmonic aggregation",
        tiny_config="winclip_tiny",
    )
)

__all__ = ["WinCLIP", "WinCLIPConfig", "WinCLIPModule"]
