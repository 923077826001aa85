"""AnomalyDINO settings (docs/methods.md#anomalydino); defaults are anomalib's ``AnomalyDINO`` (2.7.0), the
parity reference of issue 26; the authors' own code (dammsi/AnomalyDINO) differs where the docs say."""

from __future__ import annotations

import dataclasses

from lightning_modules.dino.config import DinoBackboneConfig


@dataclasses.dataclass
class AnomalyDINOConfig:
    name: str = "anomalydino"
    # DINOv2 ViT-S/14 (LVD-142M weights) at 252 x 252 px (18 x 18 patches), anomalib's encoder and size
    backbone: DinoBackboneConfig = dataclasses.field(default_factory=DinoBackboneConfig)
    num_neighbours: int = 1  # patch distance: mean over this many nearest reference patches (1 - cos)
    top_fraction: float = 0.01  # image score: mean of the largest max(int(N * 0.01), 1) patch distances
    # Map smoothing: anomalib's GaussianBlur2d (sigma 4, kernel 33, reflect padding) after a nearest
    # upsampling of the patch distances to the input size; 0: none.
    gaussian_sigma: float = 4.0
    # anomalib's foreground masking (its `masking`, off by default): per image, patches whose first principal
    # component is > 10 (sign chosen so that the centre is foreground), dilated and closed (3 x 3); background
    # patches of the references leave the memory, those of a test image score 0. masked_categories: the
    # category folder names it applies to (None: every category); anomalib's example masks capsule, hazelnut,
    # pill, screw and toothbrush of MVTec AD.
    masking: bool = False
    masked_categories: list[str] | None = None
