"""CMG's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.cmg.config import CMGConfig
from lightning_modules.method_spec import MethodSpec


def build_module(cfg: CMGConfig, eval_cfg: Any) -> Any:
    from lightning_modules.cmg.module import CMGModule

    return CMGModule(cfg, eval_cfg)


CMG = MethodSpec(
    name="cmg",
    config_class=CMGConfig,
    description="token-autoencoder detector on frozen CLIP + CMER occlusion relevance + CMLE text structure",
    tiny_config="cmg_tiny",
    build_module=build_module,
    trains=True,
    needs="normal training images of all categories of a dataset (source train_split: train); no labels or masks",
)
