"""AnoVL's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder.
Its protocol, preprocessing and DDP refusal per dataset come from one place, protocol.py."""

from __future__ import annotations

from typing import Any

from lightning_modules.anovl.config import AnoVLConfig
from lightning_modules.anovl.protocol import (
    VL_TEST,
    anovl_protocol,
    protocol_preprocessing,
    sequential_tta_refusal,
)
from lightning_modules.method_spec import MethodSpec


def build_module(cfg: AnoVLConfig, eval_cfg: Any) -> Any:
    from lightning_modules.anovl.module import AnoVLModule

    return AnoVLModule(cfg, eval_cfg)


def preprocessing(cfg: AnoVLConfig, dataset: str | None) -> Any:
    """vl_test.py's bilinear square resize; on VisA under vis_test.py, its short-side resize."""
    return protocol_preprocessing(anovl_protocol(cfg, dataset)["protocol"] if dataset else VL_TEST)


def tta_needs_grad(cfg: AnoVLConfig) -> bool:
    """Test-time adaptation optimises an adapter per image inside the test loop."""
    return bool(cfg.tta.enabled)


ANOVL = MethodSpec(
    name="anovl",
    config_class=AnoVLConfig,
    description="domain-aware state prompts + V-V tokens + per-image test-time adaptation (AnoVL)",
    tiny_config="anovl_tiny",
    build_module=build_module,
    trains=False,
    needs="nothing: training-free (test images only)",
    preprocessing=preprocessing,
    dataset_protocol=anovl_protocol,
    grad_at_test=tta_needs_grad,
    ddp_refusal=sequential_tta_refusal,
)
