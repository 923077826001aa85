"""Evaluation settings (``eval.*`` of an experiment): a plain dataclass, importable without torch, so that
configs are composed and shown (``zsad config show``) without loading the evaluation code."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class PixelScoreDtype(enum.Enum):
    """Storage of pixel scores while a category accumulates (an Enum: any other value is a config error)."""

    float32 = "float32"  # exact for float32 maps
    float16 = "float16"  # half the memory; metrics are exact for the maps rounded to float16


@dataclasses.dataclass
class EvalConfig:
    # AUPRO integrates PRO over FPR in [0, fpr_limit]; every result has the exact `aupro` and the published
    # cflow-style `aupro_cflow` (docs/metrics.md).
    fpr_limit: float = 0.3
    # AU-sPRO (datasets with region saturation rules: MVTec LOCO, AutoVI) integrates up to this FPR; MVTec's LOCO
    # code computes 0.01, 0.05, 0.1, 0.3 and 1.0 (docs/metrics.md, sPRO).
    spro_fpr_limit: float = 0.05
    pixel_score_dtype: PixelScoreDtype = PixelScoreDtype.float32
    # Write every test image's anomaly map to {run_dir}/maps/{target}/, mirroring the dataset's folders
    # (e.g. {cls}/test/{defect}/{stem}.npy, what `zsad evaluate-maps` reads), stored as pixel_score_dtype.
    save_maps: bool = False
    # Pictures of every evaluation (pipelines/visualize.py): per category ROC, PR and PRO curves (PNG + the
    # points as CSV) and a gallery of the most and least anomalous test images, in {run_dir}/plots/ and W&B.
    visualize: bool = True
    gallery_size: int = 8  # gallery images per category: the most anomalous half and the least anomalous half

    @property
    def pixel_score_torch_dtype(self) -> Any:
        """The ``torch.dtype`` of :attr:`pixel_score_dtype` (torch is imported only when asked)."""
        import torch

        return getattr(torch, PixelScoreDtype(self.pixel_score_dtype).value)
