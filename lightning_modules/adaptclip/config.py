"""AdaptCLIP settings; defaults are the authors' code (gaobb/AdaptCLIP: train.py, test.py, adaptcliplib/
adaptclip.py and scripts/*_adaptclip.sh; docs/methods.md#adaptclip)."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig

FUSIONS = ("average_mean", "harmonic_mean")
TRAIN_PROMPT_SOURCES = ("normal_train", "training_split")


@dataclasses.dataclass
class AdaptCLIPConfig:
    name: str = "adaptclip"
    # OpenAI ViT-L/14@336px at 518 px, position embedding resized bilinearly (their VisionTransformer.forward)
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    dpam_start_block: int = 6  # V-V dual path on blocks 6..last: their DPAM_layer=20 on 24 blocks
    feature_layers: list[int] = dataclasses.field(default_factory=lambda: [6, 12, 18, 24])  # --features_list
    prompt_length: int = 12  # --n_ctx: learnable vectors of the textual adapter's "X*n ." prompts
    visual_reduction: int = 4  # --vl_reduction: the visual adapter's residual MLP D -> D/4 -> D
    pq_mid_dim: int = 128  # --pq_mid_dim: the prompt-query adapter's first hidden width
    # --pq_context: fuse query + |query - aligned prompt| (True, their scripts) or only the residual (False;
    # the README: that setting lowered their published 1/2-shot Real-IAD Variety numbers)
    pq_context: bool = True
    # Their PQAdapter repeats ONE conv head and ONE MLP head in its per-layer ModuleLists (the same module
    # object, shared weights); False gives each layer its own heads (a deviation).
    pq_share_heads: bool = True
    temperature: float = 0.07
    focal_gamma: float = 2.0
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])
    gaussian_sigma: float = 4.0  # test.py --sigma
    fusion: str = "average_mean"  # test.py --fusion_type: of the adapters' maps and scores
    # Prompt images per training sample: their dataset/dataset.py takes one whatever --k_shots (one
    # random.choice per item), so 1; more is a zsad extension.
    train_prompt_images: int = 1
    # Where a training sample's prompt images come from: "normal_train", the normal training images of its
    # category (their Dataset: meta.json's "train" entries of the class, MVTec AD's train/good), or
    # "training_split", the normal images of the training split itself, the sample excluded (a deviation).
    # Their draw is Python's random.choice in each loader worker (not reproducible); zsad's depends on
    # (seed, epoch, sample) only, so a resume is exact.
    train_prompts: str = "normal_train"
    # Frozen query features computed once per training split and reused every epoch (lightning_modules/
    # feature_cache.py); the prompt images are encoded each step. cache_dir: also keep them on disk.
    cache_features: bool = True
    cache_dir: str | None = None
    cache_max_gb: float | None = None  # per process; None: at most half the free memory
