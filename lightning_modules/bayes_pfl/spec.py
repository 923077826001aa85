"""Bayes-PFL's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builders."""

from __future__ import annotations

from typing import Any

from lightning_modules.bayes_pfl.config import BayesPFLConfig
from lightning_modules.method_spec import (
    OPENAI_VIT_L14_336,
    MeasuredAt,
    MethodSpec,
    PublishedNumbers,
    cache_settings,
    visa_for_mvtec,
)

#: The paper (Qu et al., CVPR 2025, arXiv 2503.10080): image AUROC as zsad's issue 25 quotes it, MVTec AD pixel
#: AUROC as wizwand.com's listing of the paper gives it; the paper's tables could not be read here, so its other
#: numbers are not recorded. MVTec AD: trained on VisA; VisA: trained on MVTec AD.
PUBLISHED = PublishedNumbers(
    "Bayes-PFL paper (Qu et al., CVPR 2025) as quoted in zsad issue 25 (image AUROC) and wizwand.com (MVTec AD "
    "pixel AUROC)",
    {"mvtec": {"image_auroc": 0.923, "pixel_auroc": 0.918}, "visa": {"image_auroc": 0.870}},
    trained_on=visa_for_mvtec,
    epochs=lambda dataset: 30,  # their training script's epochs
)


def build_module(cfg: BayesPFLConfig, eval_cfg: Any) -> Any:
    from lightning_modules.bayes_pfl.module import BayesPFLModule

    return BayesPFLModule(cfg, eval_cfg)


def read_official_checkpoint(module: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """The authors' ``{"MyModel": ...}`` files (official_checkpoint.py)."""
    from lightning_modules.bayes_pfl.official_checkpoint import zsad_state_dict

    return zsad_state_dict(module, checkpoint, source)


def train_augmentation(cfg: BayesPFLConfig, dataset: str) -> Any:
    """Their MyDataset in mode "train": the albumentations pipeline (BGR, 1.3.1's semantics) on every image, the
    mosaic of four anomalous images of the category only in their MVTec AD training (``mosaic_datasets``)."""
    if cfg.augmentation == "none":
        return None
    from datamodules.augment import TrainAugmentation
    from datamodules.mosaic import Mosaic

    # combine_img's item is anomalous (their anomaly = 1): its four tiles are
    mosaic = Mosaic(cfg.mosaic_rate, label="any_tile") if dataset in cfg.mosaic_datasets else None
    return TrainAugmentation(pipeline="bayes_pfl", mosaic=mosaic)


BAYES_PFL = MethodSpec(
    name="bayes_pfl",
    config_class=BayesPFLConfig,
    description="prompt bank as a distribution (image-specific + image-agnostic flows), RCA, MC sampling (CVPR 2025)",
    tiny_config="bayes_pfl_tiny",
    build_module=build_module,
    trains=True,
    needs="image labels and pixel masks of the auxiliary data",
    feature_cache=cache_settings,
    train_augmentation=train_augmentation,
    official_checkpoint=read_official_checkpoint,
    published=PUBLISHED,
    # the paper's numbers beside the authors' settings only; caches and text-block checkpointing change no
    # number, and another sampling seed is another draw of the same setting
    published_at=MeasuredAt(
        ignore=("checkpoint_text_blocks", "sampling_seed"),
        files=OPENAI_VIT_L14_336,
    ),
)
