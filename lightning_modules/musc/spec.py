"""MuSc's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.method_spec import TRANSDUCTIVE, MethodSpec
from lightning_modules.musc.config import MuScConfig

# The authors' masks: Resize((S, S)) (PIL bilinear) + ToTensor, then ``.astype(np.int32)`` in models/musc.py:
# only pixels still exactly 255 after the resize count as anomalous, i.e. > 254/255.
AUTHORS_MASK_THRESHOLD = 254.5 / 255


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
    image); masks resized bilinearly and truncated to int (:data:`AUTHORS_MASK_THRESHOLD`)."""
    from datamodules.transforms import ImagePreprocessing

    return ImagePreprocessing(rgb_before_resize=True, mask_threshold=AUTHORS_MASK_THRESHOLD)


MUSC = MethodSpec(
    name="musc",
    config_class=MuScConfig,
    description="MuSc: training-free, transductive; patches scored against the category's other test images",
    tiny_config="musc_tiny",
    build_module=build_module,
    trains=False,
    needs="nothing to train on (the target category's unlabeled test images, all at once)",
    preprocessing=preprocessing,
    dataset_protocol=dataset_protocol,
    protocols=(TRANSDUCTIVE,),
)
