"""MuSc's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.method_spec import TRANSDUCTIVE, MethodSpec, PublishedNumbers
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
)
