"""AdaCLIP: hybrid (static + dynamic) learnable prompts in both CLIP towers, HSF image score."""

from lightning_modules.adaclip.config import AdaCLIPConfig
from lightning_modules.adaclip.model import AdaCLIP, AdaCLIPOutput
from lightning_modules.adaclip.module import AdaCLIPModule
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="adaclip",
        config_class=AdaCLIPConfig,
        build_module=lambda cfg, eval_cfg: AdaCLIPModule(cfg, eval_cfg),
        trains=True,
        needs="image labels + pixel masks of the auxiliary data (one or several source datasets)",
        description="AdaCLIP: static + dynamic prompts in both towers, HSF image score (ECCV 2024)",
    )
)

__all__ = ["AdaCLIP", "AdaCLIPConfig", "AdaCLIPModule", "AdaCLIPOutput"]
