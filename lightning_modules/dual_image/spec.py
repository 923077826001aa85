"""Dual-Image's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder.
Built on AnoVL: its TTA, DDP refusal and vl_test.py protocol (protocol.py), which it runs on every dataset."""

from __future__ import annotations

from typing import Any

from lightning_modules.anovl.protocol import (
    VL_TEST,
    dataset_protocol,
    protocol_preprocessing,
    sequential_tta_refusal,
)
from lightning_modules.anovl.spec import tta_needs_grad
from lightning_modules.dual_image.config import DualImageConfig
from lightning_modules.method_spec import TRANSDUCTIVE, MethodSpec


def build_module(cfg: DualImageConfig, eval_cfg: Any) -> Any:
    from lightning_modules.dual_image.module import DualImageModule

    return DualImageModule(cfg, eval_cfg)


def dual_image_protocol(cfg: DualImageConfig, dataset: str) -> dict[str, Any]:
    """[reconstruction] vl_test.py's protocol everywhere (no public code; vis_test.py's tiles would need
    tiled visual references too): ``method.visa_protocol=vis_test`` is refused."""
    return dataset_protocol(
        cfg.visa_protocol, dataset, method="dual_image", authors_code=False, implemented=(VL_TEST,)
    )


def preprocessing(cfg: DualImageConfig, dataset: str | None) -> Any:
    if dataset:
        dual_image_protocol(cfg, dataset)  # refuses vis_test.py's on VisA
    return protocol_preprocessing(VL_TEST)


DUAL_IMAGE = MethodSpec(
    name="dual_image",
    config_class=DualImageConfig,
    description="AnoVL text branch + same-category test images as visual references + TTA (DIE-CLIP)",
    tiny_config="dual_image_tiny",
    build_module=build_module,
    trains=False,
    needs="nothing: training-free (the other test images of each category are the visual references)",
    # its numbers depend on which test images are scored together (each is the others' visual reference),
    # as MuSc's: zsad's protocol name for that is transductive, never zero-shot (docs/protocols.md)
    protocols=(TRANSDUCTIVE,),
    preprocessing=preprocessing,
    dataset_protocol=dual_image_protocol,
    grad_at_test=tta_needs_grad,
    ddp_refusal=sequential_tta_refusal,
)
