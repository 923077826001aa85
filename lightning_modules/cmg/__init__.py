"""CMG (cross-modal guidance, arXiv 2310.02821): CMER + CMLE guiding an unsupervised vision detector."""

from lightning_modules.cmg.config import CMERConfig, CMGConfig, CMLEConfig, DetectorConfig
from lightning_modules.cmg.model import CMG
from lightning_modules.cmg.module import CMGModule
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="cmg",
        config_class=CMGConfig,
        build_module=lambda cfg, eval_cfg: CMGModule(cfg, eval_cfg),
        trains=True,
        needs="normal training images of all categories of a dataset (source train_split: train); no labels or masks",
        description="token-autoencoder detector on frozen CLIP + CMER occlusion relevance + CMLE text structure",
        tiny_config="cmg_tiny",
    )
)

__all__ = ["CMG", "CMERConfig", "CMGConfig", "CMGModule", "CMLEConfig", "DetectorConfig"]
