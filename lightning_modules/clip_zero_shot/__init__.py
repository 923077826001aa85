"""CLIP and CLIP-AC: training-free baselines of AnomalyCLIP's comparison (single prompt pair / ensemble)."""

from lightning_modules.clip_zero_shot.config import CLIPACConfig, CLIPConfig
from lightning_modules.clip_zero_shot.model import CLIPZeroShot
from lightning_modules.clip_zero_shot.module import CLIPZeroShotModule
from lightning_modules.registry import MethodSpec, register_method

for _config, _description in (
    (CLIPConfig, "frozen CLIP, 'a photo of a normal/an anomalous [cls].', maps from last-layer tokens"),
    (
        CLIPACConfig,
        "CLIP with CLIP's ImageNet prompt ensemble: 'normal/anomalous [cls]' in 80 templates, averaged per "
        "class (reconstruction)",
    ),
):
    register_method(
        MethodSpec(
            name=_config.name,
            config_class=_config,
            build_module=lambda cfg, eval_cfg: CLIPZeroShotModule(cfg, eval_cfg),
            trains=False,
            needs="nothing to train on (category names for the prompts)",
            description=_description,
            tiny_config=f"{_config.name}_tiny",
        )
    )

__all__ = ["CLIPACConfig", "CLIPConfig", "CLIPZeroShot", "CLIPZeroShotModule"]
