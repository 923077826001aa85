"""MuSc's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_modules.method_spec import (
    TRANSDUCTIVE,
    MethodSpec,
    PublishedNumbers,
    is_released_file,
    with_defaults,
)
from lightning_modules.musc.config import MuScConfig

# The authors' masks: Resize((S, S)) (PIL bilinear) + ToTensor, then ``.astype(np.int32)`` in models/musc.py:
# only pixels still exactly 255 after the resize count as anomalous, i.e. > 254/255.
AUTHORS_MASK_THRESHOLD = 254.5 / 255


#: The mean rows of the authors' README, "Results of different datasets" ("implemented by the default
#: settings in our paper": ViT-L-14-336 at 518 px, divide_num 1, r_list 1 3 5; the same rows as its
#: ViT-L-14-336 / 518 lines of "Results of different backbones"); AUPRO is their cflow-style one. The paper's
#: own table, which the README's comparison repeats, rounds other runs: MVTec AD 97.8 / 97.5 / 99.1 image,
#: 97.3 pixel AUROC, 62.7 pixel AP, 93.8 AUPRO; VisA 92.8 / 89.5 / 93.5, 98.8, 45.1, 92.7.
PUBLISHED = PublishedNumbers(
    "MuSc README (github.com/xrli-U/MuSc, 'Results of different datasets', mean rows; the authors' code at "
    "the paper's default settings)",
    {
        "mvtec": {
            "image_auroc": 0.9777,
            "image_f1_max": 0.9737,
            "image_ap": 0.9907,
            "pixel_auroc": 0.9711,
            "pixel_ap": 0.6226,
            "aupro": 0.9345,
        },
        "visa": {
            "image_auroc": 0.9257,
            "image_f1_max": 0.8906,
            "image_ap": 0.9331,
            "pixel_auroc": 0.9871,
            "pixel_ap": 0.4538,
            "aupro": 0.9243,
        },
        "btad": {
            "image_auroc": 0.9616,
            "image_f1_max": 0.9390,
            "image_ap": 0.9785,
            "pixel_auroc": 0.9735,
            "pixel_ap": 0.5715,
            "aupro": 0.8343,
        },
    },
)


#: Their README's "Results of different backbones" (github.com/xrli-U/MuSc, the mean rows of each dataset; their
#: scripts/musc_{mvtec_ad,visa,btad}.sh: feature layers 2 5 8 11 for the 12-block ViTs, 5 11 17 23 for the
#: 24-block ones, divide_num 1, r_list 1 3 5, every other setting the paper's default), the rows of
#: configs/sweep/musc_backbones.yaml: (their backbone_name, img_resize) -> dataset -> (image AUROC, F1-max, AP,
#: pixel AUROC, F1-max, AP, cflow AUPRO) in percent. Their ViT-L-14-336 / 518 rows are the paper's default
#: (:data:`PUBLISHED`'s numbers).
BACKBONE_STUDY_SOURCE = "MuSc README (github.com/xrli-U/MuSc), 'Results of different backbones', mean rows"
BACKBONE_STUDY_METRICS = (
    "image_auroc",
    "image_f1_max",
    "image_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_ap",
    "aupro",
)
BACKBONE_STUDY: dict[tuple[str, int], dict[str, tuple[float, ...]]] = {
    ("ViT-B-32", 256): {
        "mvtec": (87.99, 92.31, 94.38, 93.08, 42.06, 37.21, 72.62),
        "visa": (72.95, 76.90, 77.68, 89.30, 25.93, 20.68, 50.95),
        "btad": (92.19, 95.55, 98.47, 96.74, 43.98, 35.70, 68.56),
    },
    ("ViT-B-32", 512): {
        "mvtec": (89.91, 92.72, 95.12, 95.73, 53.32, 52.33, 83.72),
        "visa": (77.82, 80.20, 81.01, 96.06, 34.72, 30.20, 73.08),
        "btad": (93.31, 94.61, 98.40, 97.41, 52.94, 48.80, 69.59),
    },
    ("ViT-B-16", 256): {
        "mvtec": (92.78, 93.98, 96.59, 96.21, 52.48, 50.23, 87.00),
        "visa": (81.44, 80.86, 83.84, 95.97, 36.72, 31.81, 73.48),
        "btad": (92.44, 91.00, 97.31, 97.45, 55.27, 52.19, 72.68),
    },
    ("ViT-B-16", 512): {
        "mvtec": (94.20, 95.20, 97.34, 97.09, 61.24, 61.45, 91.67),
        "visa": (86.48, 84.12, 88.05, 97.98, 42.21, 37.29, 85.10),
        "btad": (94.11, 92.99, 97.98, 97.91, 59.18, 59.05, 77.86),
    },
    ("ViT-B-16-plus-240", 240): {
        "mvtec": (94.77, 95.43, 97.60, 96.26, 52.23, 50.27, 87.70),
        "visa": (82.62, 81.61, 85.05, 96.11, 37.84, 33.43, 72.37),
        "btad": (92.86, 93.99, 97.96, 97.68, 54.81, 51.33, 73.47),
    },
    ("ViT-B-16-plus-240", 512): {
        "mvtec": (95.69, 96.50, 98.11, 97.28, 60.71, 61.29, 92.14),
        "visa": (86.72, 84.22, 89.41, 97.95, 43.27, 37.68, 83.52),
        "btad": (94.13, 93.84, 98.34, 98.14, 58.66, 57.53, 77.23),
    },
    ("ViT-L-14", 336): {
        "mvtec": (96.06, 96.65, 98.25, 97.24, 59.41, 58.10, 91.69),
        "visa": (88.38, 85.23, 89.77, 98.32, 44.67, 40.42, 87.80),
        "btad": (92.74, 93.21, 97.71, 97.84, 56.60, 55.94, 77.01),
    },
    ("ViT-L-14", 518): {
        "mvtec": (95.94, 96.32, 98.30, 97.42, 63.06, 63.67, 92.92),
        "visa": (90.86, 87.75, 91.66, 98.45, 45.74, 42.09, 89.93),
        "btad": (94.82, 95.29, 98.58, 97.77, 55.55, 55.46, 80.62),
    },
    ("ViT-L-14-336", 336): {
        "mvtec": (96.40, 96.44, 98.30, 97.03, 57.51, 55.44, 92.18),
        "visa": (88.61, 85.31, 90.00, 98.53, 45.10, 40.92, 89.35),
        "btad": (95.11, 94.48, 98.53, 97.42, 56.75, 55.23, 79.63),
    },
    ("ViT-L-14-336", 518): {
        "mvtec": (97.77, 97.37, 99.07, 97.11, 62.16, 62.26, 93.45),
        "visa": (92.57, 89.06, 93.31, 98.71, 48.90, 45.38, 92.43),
        "btad": (96.16, 93.90, 97.85, 97.35, 57.86, 57.15, 83.43),
    },
    ("dino_vitbase16", 256): {
        "mvtec": (89.39, 93.77, 95.37, 95.83, 54.02, 52.84, 84.24),
        "visa": (78.21, 80.12, 81.11, 95.74, 36.81, 32.84, 70.21),
        "btad": (93.63, 95.66, 98.66, 97.55, 52.16, 49.25, 72.86),
    },
    ("dino_vitbase16", 512): {
        "mvtec": (94.11, 96.13, 97.26, 97.78, 62.07, 63.20, 92.49),
        "visa": (84.11, 83.52, 85.91, 97.74, 42.86, 38.27, 83.00),
        "btad": (92.38, 92.66, 97.81, 97.44, 53.32, 53.02, 74.91),
    },
    ("dinov2_vitb14", 336): {
        "mvtec": (95.67, 96.80, 97.95, 97.74, 60.23, 59.45, 93.84),
        "visa": (87.65, 86.24, 88.51, 97.80, 41.68, 37.06, 85.01),
        "btad": (93.60, 91.65, 97.19, 98.08, 63.28, 65.32, 74.35),
    },
    ("dinov2_vitb14", 518): {
        "mvtec": (96.31, 96.87, 98.32, 98.07, 64.65, 65.31, 95.59),
        "visa": (90.25, 87.48, 90.86, 98.66, 45.56, 41.23, 91.80),
        "btad": (94.99, 95.11, 98.55, 98.30, 65.75, 68.89, 80.41),
    },
    ("dinov2_vitl14", 336): {
        "mvtec": (96.84, 97.45, 98.68, 98.17, 61.77, 61.21, 94.62),
        "visa": (90.18, 88.47, 90.56, 98.38, 43.84, 38.74, 88.38),
        "btad": (94.15, 92.64, 97.61, 98.19, 63.86, 66.03, 76.33),
    },
    ("dinov2_vitl14", 518): {
        "mvtec": (97.08, 97.13, 98.82, 98.34, 66.15, 67.39, 96.16),
        "visa": (91.73, 89.20, 92.27, 98.78, 47.12, 42.79, 92.40),
        "btad": (95.62, 95.40, 98.76, 98.40, 65.88, 69.90, 82.47),
    },
}
#: zsad's open_clip model and weights of each of their CLIP backbone names (their scripts' --pretrained; zsad
#: names OpenAI's models -quickgelu, the activation their weights were trained with)
AUTHORS_CLIP_BACKBONES = {
    "ViT-B-32": ("ViT-B-32-quickgelu", "openai"),
    "ViT-B-16": ("ViT-B-16-quickgelu", "openai"),
    "ViT-B-16-plus-240": ("ViT-B-16-plus-240", "laion400m_e31"),
    "ViT-L-14": ("ViT-L-14-quickgelu", "openai"),
    "ViT-L-14-336": ("ViT-L-14-336-quickgelu", "openai"),
}
#: The released files of those weights (open_clip's download URLs), as a user gives them as
#: ``backbone.pretrained=/path/to/FILE``: the same weights as the tag
AUTHORS_CLIP_FILES = {
    "ViT-B-32": "ViT-B-32.pt",
    "ViT-B-16": "ViT-B-16.pt",
    "ViT-B-16-plus-240": "vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
    "ViT-L-14": "ViT-L-14.pt",
    "ViT-L-14-336": "ViT-L-14-336px.pt",
}
#: zsad's timm architecture of each of their DINO / DINOv2 backbone names (Meta's weights: timm's tags
#: ``dino`` / ``lvd142m``, or Meta's own ``<name>_pretrain.pth`` files)
AUTHORS_DINO_BACKBONES = {
    "dino_vitbase16": ("dino", "vit_base_patch16_224", "dino"),
    "dino_vitbase8": ("dino", "vit_base_patch8_224", "dino"),
    "dinov2_vitb14": ("dinov2", "vit_base_patch14_dinov2", "lvd142m"),
    "dinov2_vitl14": ("dinov2", "vit_large_patch14_dinov2", "lvd142m"),
}
#: The settings besides the backbone that change MuSc's numbers: a study row stands beside a run only where
#: these are the paper's (the config's defaults; their scripts set divide_num 1 and r_list 1 3 5 as these do).
STUDY_FIXED_SETTINGS = (
    "r_list",
    "topmin_min",
    "topmin_max",
    "divide_num",
    "divide_seed",
    "k_list",
    "amp",
)
#: Per backbone family, its switches away from the authors' models (the config's defaults; only the chosen
#: family's are read, the other backbone is not built): the position-embedding resampling, CLIP's activation.
STUDY_FIXED_BACKBONE_SETTINGS = {
    "clip": ("backbone.pos_embed_interpolation", "activation"),
    "dino": ("dino.pos_embed_antialias", "dino.interpolate_offset"),
    "dinov2": ("dino.pos_embed_antialias", "dino.interpolate_offset"),
}


def backbone_study(name: str, size: int) -> PublishedNumbers:
    """The README's numbers of their backbone ``name`` at ``size`` px (:data:`BACKBONE_STUDY`), as fractions."""
    rows = BACKBONE_STUDY[(name, size)]
    return PublishedNumbers(
        f"{BACKBONE_STUDY_SOURCE}: {name} at {size} px",
        {
            d: {m: v / 100 for m, v in zip(BACKBONE_STUDY_METRICS, row, strict=True)}
            for d, row in rows.items()
        },
    )


def _authors_backbone(setting: Mapping[str, Any]) -> tuple[str, int] | None:
    """(their backbone_name, img_resize) of a run's complete method setting (:func:`with_defaults`); None for
    a backbone they did not run. The weights: their tag, or a file of the released name."""
    family = setting["backbone_family"]
    if family == "clip":
        model, weights, size = (setting[f"backbone.{k}"] for k in ("name", "pretrained", "image_size"))
        names = [
            n
            for n, (architecture, tag) in AUTHORS_CLIP_BACKBONES.items()
            if model == architecture and is_released_file(weights, tag, AUTHORS_CLIP_FILES[n])
        ]
    else:
        model, weights, size = (setting[f"dino.{k}"] for k in ("name", "pretrained", "image_size"))
        names = [
            n
            for n, (kind, architecture, tag) in AUTHORS_DINO_BACKBONES.items()
            if (kind, architecture) == (family, model) and is_released_file(weights, tag, f"{n}_pretrain.pth")
        ]
    return (names[0], int(size)) if names else None


def published_for(settings: Mapping[str, Any]) -> PublishedNumbers | None:
    """The paper's numbers for its default setting; the README's backbone study for another backbone and size
    of it run with their scripts' feature layers; None for anything else (no source states numbers there)."""
    default = with_defaults({}, MuScConfig)
    setting = with_defaults(settings, MuScConfig)
    fixed = STUDY_FIXED_SETTINGS + STUDY_FIXED_BACKBONE_SETTINGS.get(setting["backbone_family"], ())
    if any(setting[k] != default[k] for k in fixed):
        return None
    row = _authors_backbone(setting)
    if row is None or row not in BACKBONE_STUDY:
        return None
    their_layers = [2, 5, 8, 11] if "-B-" in row[0] or "vitb" in row[0] else [5, 11, 17, 23]
    if list(setting["feature_layers"]) != their_layers:
        return None
    return PUBLISHED if row == ("ViT-L-14-336", 518) else backbone_study(*row)


def build_module(cfg: MuScConfig, eval_cfg: Any) -> Any:
    from lightning_modules.musc.module import MuScModule

    return MuScModule(cfg, eval_cfg)


def dataset_protocol(cfg: MuScConfig, dataset: str) -> dict[str, Any]:
    """Transductive: each category's test images scored against each other; the subsets and RsCIN's
    neighbourhood sizes used there (the authors' k_list depends on the dataset)."""
    return {
        "protocol": TRANSDUCTIVE,
        "divide_num": cfg.divide_num,
        "k_list": cfg.k_list_for(dataset),
    }


def preprocessing(cfg: MuScConfig, dataset: str | None) -> Any:
    """Their dataset converts to RGB, then open_clip's val transform (Resize((S, S), BICUBIC) on the PIL
    image, OpenAI's mean/std); with a DINO / DINOv2 backbone (no CLIP transform) their own: Resize((S, S))
    (PIL bilinear), CenterCrop(S), ImageNet mean/std (datasets/mvtec.py). Masks resized bilinearly and
    truncated to int (:data:`AUTHORS_MASK_THRESHOLD`)."""
    from datamodules.transforms import ImagePreprocessing

    if cfg.backbone_family != "clip":
        return ImagePreprocessing(
            rgb_before_resize=True,
            interpolation="bilinear",
            normalization="imagenet",
            mask_threshold=AUTHORS_MASK_THRESHOLD,
        )
    return ImagePreprocessing(rgb_before_resize=True, mask_threshold=AUTHORS_MASK_THRESHOLD)


def image_size(cfg: MuScConfig) -> int:
    """The chosen backbone's input size (``backbone.image_size`` or ``dino.image_size``)."""
    return cfg.input_size


MUSC = MethodSpec(
    name="musc",
    config_class=MuScConfig,
    description="MuSc: training-free, transductive; patches scored against the category's other test images",
    tiny_config="musc_tiny",
    build_module=build_module,
    trains=False,
    needs="nothing to train on (the target category's unlabeled test images, all at once)",
    preprocessing=preprocessing,
    image_size=image_size,
    dataset_protocol=dataset_protocol,
    protocols=(TRANSDUCTIVE,),
    published=PUBLISHED,
    published_for=published_for,
)
