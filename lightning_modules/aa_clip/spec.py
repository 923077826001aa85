"""AA-CLIP's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builders."""

from __future__ import annotations

from typing import Any

from lightning_modules.aa_clip.config import AAClipConfig
from lightning_modules.method_spec import MethodSpec


def build_module(cfg: AAClipConfig, eval_cfg: Any) -> Any:
    from lightning_modules.aa_clip.module import AAClipModule

    return AAClipModule(cfg, eval_cfg)


def preprocessing(cfg: AAClipConfig, dataset: str | None) -> Any:
    """Their dataset: ``Image.open(...).convert("RGB")``, ``Resize((S, S), BICUBIC)``; masks
    ``Resize((S, S), NEAREST)`` then ``!= 0`` (dataset/__init__.py)."""
    from datamodules.transforms import ImagePreprocessing

    return ImagePreprocessing(rgb_before_resize=True, mask_interpolation="nearest")


def train_augmentation(cfg: AAClipConfig, dataset: str) -> Any:
    """Their BaseDataset: rotation, translation and flips in both stages, colour jitter from stage 2 on."""
    if cfg.augmentation == "none":
        return None
    from datamodules.augment import TrainAugmentation

    return TrainAugmentation(pipeline="aa_clip", color_from_epoch=cfg.text_epochs)


def read_official_checkpoint(module: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """Their train.py's ``image_adapter_{epoch}.pth`` and the ``text_adapter.pth`` beside it
    (official_checkpoint.py; they have released none)."""
    from lightning_modules.aa_clip.official_checkpoint import zsad_state_dict

    return zsad_state_dict(module, checkpoint, source)


AA_CLIP = MethodSpec(
    name="aa_clip",
    config_class=AAClipConfig,
    description="AA-CLIP: residual adapters, text anchors then vision alignment, in two stages (CVPR 2025)",
    tiny_config="aa_clip_tiny",
    build_module=build_module,
    trains=True,
    needs="image labels + pixel masks of the auxiliary data",
    preprocessing=preprocessing,
    train_augmentation=train_augmentation,
    official_checkpoint=read_official_checkpoint,
)
