"""VCP-CLIP's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builders.
(Adapted to the MethodSpec contract in h/bayespfl, which merged h/vcpclip: the VCP-CLIP branch's own
adaptation supersedes this file.)"""

from __future__ import annotations

from typing import Any

from lightning_modules.method_spec import MethodSpec, PublishedNumbers, cache_settings
from lightning_modules.vcp_clip.config import VCPCLIPConfig

#: The paper's VisA row (trained on MVTec AD) as github.com/xiaozhen228/VCP-CLIP issue #3 quotes it (the
#: authors answer there that the paper reports a mean over several trainings).
PUBLISHED = PublishedNumbers(
    "VCP-CLIP paper (Qu et al., ECCV 2024) as quoted in github.com/xiaozhen228/VCP-CLIP issue #3 (a mean over seeds)",
    {
        "visa": {
            "pixel_auroc": 0.957,
            "aupro": 0.907,
            "pixel_ap": 0.301,
            "image_auroc": 0.838,
            "image_ap": 0.876,
        }
    },
)


def build_module(cfg: VCPCLIPConfig, eval_cfg: Any) -> Any:
    from lightning_modules.vcp_clip.module import VCPCLIPModule

    return VCPCLIPModule(cfg, eval_cfg)


def read_official_checkpoint(module: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    from lightning_modules.vcp_clip.official_checkpoint import zsad_state_dict

    return zsad_state_dict(module, checkpoint, source)


def train_augmentation(cfg: VCPCLIPConfig, dataset: str) -> Any:
    """Their dataset classes' augmentation in mode "train": the albumentations pipeline on every image, the
    mosaic only in their MVTec AD class (``mosaic_datasets``)."""
    if cfg.augmentation == "none":
        return None
    from datamodules.augment import TrainAugmentation

    mosaic = cfg.mosaic_rate if dataset in cfg.mosaic_datasets else 0.0
    return TrainAugmentation(pipeline="vcp_clip", mosaic_rate=mosaic)


VCP_CLIP = MethodSpec(
    name="vcp_clip",
    config_class=VCPCLIPConfig,
    description="VCP-CLIP: image-conditioned prompts (pre-VCP), texts refined by patch tokens (post-VCP)",
    tiny_config="vcp_clip_tiny",
    build_module=build_module,
    trains=True,
    needs="pixel masks of the auxiliary data (no image loss)",
    feature_cache=cache_settings,
    train_augmentation=train_augmentation,
    official_checkpoint=read_official_checkpoint,
    published=PUBLISHED,
)
