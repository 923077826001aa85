"""AnomalyDINO's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.method_spec import FEW_SHOT, MethodSpec
from lightning_modules.published import anomalydino_paper


def build_module(cfg: AnomalyDINOConfig, eval_cfg: Any) -> Any:
    from lightning_modules.anomalydino.module import AnomalyDINOModule

    return AnomalyDINOModule(cfg, eval_cfg)


def preprocessing(cfg: AnomalyDINOConfig, dataset: str | None) -> Any:
    """anomalib's: ``convert("RGB")``, the float tensor resized (bicubic, antialiased) and normalised with
    ImageNet's mean/std; the mask nearest. ``preprocessing: authors`` (their DINOv2Wrapper and post_eval):
    the RGB image's short side resized to the input size by PIL (bicubic), aspect kept, ImageNet's mean/std;
    the mask at the file's own resolution."""
    from datamodules.transforms import ImagePreprocessing

    if cfg.preprocessing == "authors":
        return ImagePreprocessing(
            resize_backend="pil",
            interpolation="bicubic",
            resize="short_side",
            rgb_before_resize=True,
            normalization="imagenet",
            mask_size="original",
        )
    return ImagePreprocessing(resize_backend="tensor", mask_interpolation="nearest", normalization="imagenet")


ANOMALYDINO = MethodSpec(
    name="anomalydino",
    config_class=AnomalyDINOConfig,
    description="few-shot: DINOv2 patch features, 1-NN cosine distance to K reference images (anomalib's)",
    tiny_config="anomalydino_tiny",
    build_module=build_module,
    trains=False,
    needs="K normal reference images per category (protocol.shots=K); nothing to train",
    preprocessing=preprocessing,
    protocols=(FEW_SHOT,),  # no zero-shot mode: images are scored against the references only
    published=anomalydino_paper(),
)
