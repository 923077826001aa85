"""AdaCLIP's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builders."""

from __future__ import annotations

from typing import Any

from lightning_modules.adaclip.config import AdaCLIPConfig
from lightning_modules.method_spec import OPENAI_VIT_L14_336, MeasuredAt, MethodSpec
from lightning_modules.published import adaclip_paper


def build_module(cfg: AdaCLIPConfig, eval_cfg: Any) -> Any:
    from lightning_modules.adaclip.module import AdaCLIPModule

    return AdaCLIPModule(cfg, eval_cfg)


def preprocessing(cfg: AdaCLIPConfig, dataset: str | None) -> Any:
    """Their dataset converts to RGB before the transform; then Resize((S, S), BICUBIC) as AnomalyCLIP."""
    from datamodules.transforms import ImagePreprocessing

    return ImagePreprocessing(rgb_before_resize=True)


def ddp_refusal(cfg: AdaCLIPConfig) -> str | None:
    """Batched HSF scores depend on the batch's other images (k-means is discontinuous in ~1e-7 changes of
    its input, docs/methods.md#adaclip); one image at a time, as their loop, they do not."""
    if cfg.use_hsf and not cfg.per_image_test:
        return (
            "AdaCLIP's batched HSF image scores depend on how the test set is split into batches: evaluate "
            "in one process, or with method.per_image_test=true (the default: one image at a time, as the "
            "authors' loop)"
        )
    return None


def read_official_checkpoint(module: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """The authors' flat ``clip_model.*`` files (official_checkpoint.py)."""
    from lightning_modules.adaclip.official_checkpoint import zsad_state_dict

    return zsad_state_dict(module, checkpoint, source)


ADACLIP = MethodSpec(
    name="adaclip",
    config_class=AdaCLIPConfig,
    description="AdaCLIP: static + dynamic prompts in both towers, HSF image score (ECCV 2024)",
    tiny_config="adaclip_tiny",
    build_module=build_module,
    trains=True,
    needs="image labels + pixel masks of the auxiliary data (one or several source datasets)",
    preprocessing=preprocessing,
    ddp_refusal=ddp_refusal,
    official_checkpoint=read_official_checkpoint,
    published=adaclip_paper(),
    # the paper's numbers beside the authors' settings only (gradient checkpointing changes no number)
    published_at=MeasuredAt(
        ignore=("gradient_checkpointing",),
        files=OPENAI_VIT_L14_336,
    ),
)
