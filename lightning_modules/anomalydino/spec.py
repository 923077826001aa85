"""AnomalyDINO's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.method_spec import (
    FEW_SHOT,
    TRANSDUCTIVE,
    MethodSpec,
    PublishedNumbers,
    is_released_file,
    with_defaults,
)
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


#: The authors' setting (configs/method/anomalydino_authors.yaml, their run_anomalydino.py defaults) as
#: flattened method settings: where the paper's numbers were measured. masked_categories and the reference
#: weights are checked apart (the categories in any order; their tag or Meta's file).
AUTHORS_SETTING: dict[str, Any] = {
    "backbone.name": "vit_small_patch14_dinov2",
    "backbone.image_size": 448,
    "backbone.any_aspect": True,
    "backbone.crop": "top_left",
    "backbone.interpolate_offset": 0.1,
    "backbone.pos_embed_antialias": False,
    "preprocessing": "authors",
    "num_neighbours": 1,
    "top_fraction": 0.01,
    "map_resize": "bilinear",
    "gaussian": "scipy",
    "gaussian_sigma": 4.0,
    "masking": True,
    "mask_references": False,
    "mask_morphology": "raster",
    "rotate_references": True,
    "rotated_categories": None,
    "rotation_angles": [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0],
}
#: their get_dataset_info(..., "agnostic") masks these MVTec AD categories and every VisA category
AUTHORS_MASKED = (
    *("capsule", "hazelnut", "pill", "screw", "toothbrush"),
    *("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2"),
    *("pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"),
)
AUTHORS_WEIGHTS = ("lvd142m", "dinov2_vits14_pretrain.pth")  # timm's tag of Meta's weights, Meta's file


def published_for(settings: Mapping[str, Any]) -> PublishedNumbers | None:
    """The paper's numbers beside runs of the authors' setting only (they were measured with their code:
    448 px, masking, rotated references); anomalib's defaults and any other setting: none."""
    setting = with_defaults(settings, AnomalyDINOConfig)
    if any(setting[k] != v for k, v in AUTHORS_SETTING.items()):
        return None
    masked = setting["masked_categories"]
    if masked is None or set(masked) != set(AUTHORS_MASKED):  # None: every category masked, bottle too
        return None
    if not is_released_file(setting["backbone.pretrained"], *AUTHORS_WEIGHTS):
        return None
    return ANOMALYDINO_PUBLISHED


ANOMALYDINO_PUBLISHED = anomalydino_paper()

ANOMALYDINO = MethodSpec(
    name="anomalydino",
    config_class=AnomalyDINOConfig,
    description=(
        "few-shot: DINOv2 patch features, 1-NN cosine distance to K reference images (anomalib's); "
        "shots=0: the authors' batched zero-shot (each image against the category's other test images)"
    ),
    tiny_config="anomalydino_tiny",
    build_module=build_module,
    trains=False,
    needs=(
        "K normal reference images per category (protocol.shots=K), or none: the category's unlabeled test "
        "images, all at once (protocol.shots=0); nothing to train"
    ),
    preprocessing=preprocessing,
    # k-shot: scored against the references; shots=0: batched zero-shot (run_anomalydino_batched.py), the
    # transductive protocol (every process gathers each category's patches: a DDP evaluation is exact)
    protocols=(FEW_SHOT, TRANSDUCTIVE),
    published=ANOMALYDINO_PUBLISHED,
    published_for=published_for,
)
