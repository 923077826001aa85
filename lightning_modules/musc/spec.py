"""MuSc's contract with zsad (lightning_modules/method_spec.py); light: the model loads in the builder."""

from __future__ import annotations

from typing import Any

from lightning_modules.musc.config import MuScConfig

# The authors' masks: Resize((S, S)) (PIL bilinear) + ToTensor, then ``.astype(np.int32)`` in models/musc.py:
# only pixels still exactly 255 after the resize count as anomalous, i.e. > 254/255.
AUTHORS_MASK_THRESHOLD = 254.5 / 255


def preprocessing(cfg: MuScConfig, dataset: str | None) -> Any:
    """Their dataset converts to RGB, then open_clip's val transform (Resize((S, S), BICUBIC) on the PIL
    image); masks resized bilinearly and truncated to int (:data:`AUTHORS_MASK_THRESHOLD`)."""
    from datamodules.transforms import ImagePreprocessing

    return ImagePreprocessing(rgb_before_resize=True, mask_threshold=AUTHORS_MASK_THRESHOLD)
