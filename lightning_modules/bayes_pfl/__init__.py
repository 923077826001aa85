"""Bayes-PFL (Qu et al., CVPR 2025): Bayesian prompt flow learning for zero-shot anomaly detection."""

from lightning_modules.bayes_pfl.config import BayesPFLConfig
from lightning_modules.bayes_pfl.model import BayesPFL
from lightning_modules.bayes_pfl.module import BayesPFLModule
from lightning_modules.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="bayes_pfl",
        config_class=BayesPFLConfig,
        build_module=lambda cfg, eval_cfg: BayesPFLModule(cfg, eval_cfg),
        trains=True,
        needs="image labels and pixel masks of the auxiliary data",
        description="prompt bank as a distribution (image-specific + image-agnostic flows), RCA, MC sampling (CVPR 2025)",
    )
)

__all__ = ["BayesPFL", "BayesPFLConfig", "BayesPFLModule"]
