"""Bayes-PFL settings (docs/methods.md#bayes-pfl). Every default is the authors' code (xiaozhen228/Bayes-PFL:
``train.sh`` / ``test.sh`` and the code they run); the comment of each field says where it comes from."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig

BAYES_PFL_ACTIVATIONS = ("gelu", "quick_gelu")
BAYES_PFL_AUGMENTATIONS = ("authors", "none")


def _bayes_pfl_backbone() -> BackboneConfig:
    # train.sh / test.sh: --pretrained_path ViT-L-14-336px.pt --image_size 518; models/model_CLIP.py
    # (Load_CLIP) resizes the 24x24 position embedding with resize_pos_embed: bicubic, antialias=True.
    return BackboneConfig(name="ViT-L-14-336", pos_embed_interpolation="bicubic")


def _authors_category_words() -> dict[str, str]:
    # models/VPB.py, class_mapping: the folder name is the word unless mapped here (then .lower()).
    return {
        "macaroni1": "macaroni",
        "macaroni2": "macaroni",
        "pcb1": "printed circuit board",
        "pcb2": "printed circuit board",
        "pcb3": "printed circuit board",
        "pcb4": "printed circuit board",
        "pipe_fryum": "pipe fryum",
        "chewinggum": "chewing gum",
        "metal_nut": "metal nut",
    }


def _few_pixel_categories() -> list[str]:
    # models/metric_and_visualization.py (calcuate_metric_pixel): can_k = -20 for these, else -2000.
    return ["capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw", "cashew", "chewinggum"]


@dataclasses.dataclass
class BayesPFLConfig:
    name: str = "bayes_pfl"
    backbone: BackboneConfig = dataclasses.field(default_factory=_bayes_pfl_backbone)
    # MLP activation of both towers: models/transformer.py builds every ResidualAttentionBlock with nn.GELU
    # (exact) although OpenAI's weights were trained with QuickGELU. "quick_gelu": the weights' own.
    activation: str = "gelu"
    feature_layers: list[int] = dataclasses.field(default_factory=lambda: [6, 12, 18, 24])  # --features_list
    # The prompt bank (models/VPB.py, Context_Prompting): B prompts (--prompt_num 3), each P learnable context
    # vectors (--prompt_context_len 5) then Q state vectors (--prompt_state_len 5), one state set per class;
    # "[SOS] ctx(P) state(Q) <class word> [EOS]" replaces the "X" of "X <class word>".
    prompt_bank_size: int = 3
    context_length: int = 5
    state_length: int = 5
    # Initialisation: nn.init.trunc_normal_(std 0.02) around 0 (context), 0.5 (normal), -0.5 (abnormal).
    normal_state_mean: float = 0.5
    abnormal_state_mean: float = -0.5
    # Prompt flows (models/PFL.py): planar flows of length K (--num_flows 10) on an image-specific
    # distribution (amortised from the image embedding) added to the context vectors and on an image-agnostic
    # one per class (learned input "state") added to the state vectors.
    num_flows: int = 10
    # Monte-Carlo samples R of both distributions at test time (test.sh --sample_num 10); training draws one.
    test_samples: int = 10
    # Where the test-time draws come from (docs/methods.md#bayes-pfl, "stochastic inference"): "per_image":
    # each image's image-specific draws from a generator seeded by (seed, dataset, image path), the
    # image-agnostic draws from one seeded by (seed, dataset), shared by every image of the target as their
    # test.py shares the first image's (MyModel.zk_n / zk_a). Independent of batch size, workers and DDP.
    sampling_seed: int = 333  # test.sh --seed 333
    # KL weight of each distribution (models/VPB.py forward_ensemble: 0.01 * kl).
    kl_weight: float = 0.01
    # Residual cross-modal attention (models/VPB.py Zero_Parameter): num_heads 4, scale text_width ** -0.5.
    rca_heads: int = 4
    temperature_init: float = 0.07  # temperature_pixel / temperature_image = log(1 / 0.07), learnable
    focal_gamma: float = 2.0  # loss.py FocalLoss (gamma 2, alpha 1, foreground and background averaged apart)
    # train.py: Adam(betas 0.5/0.999) in groups: prompts (--learning_rate_prompt 1e-3), the flows' own
    # parameters and states (--learning_rate_PFL 1e-3), encoders/decoders/RCA/mappings (--learning_rate_linear
    # 1e-4), temperatures 0.01; transformers' get_cosine_schedule_with_warmup, 10 % warm-up of all steps.
    lr_prompt: float = 1e-3
    lr_flow: float = 1e-3
    lr_linear: float = 1e-4
    lr_temperature: float = 0.01
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])
    warmup_fraction: float = 0.1
    # Two training stages (train.py): stage 1 trains everything on class + segmentation + KL + orthogonal
    # losses; stage 2 only the image-score head (class_mapping, image_mapping, fuse) on the class loss, with
    # the patch tokens fused into the image embedding. The authors switch when the pixel AP of five target
    # categories stops improving (early stopping on target data); zsad has no such validation loop, so
    # stage 2 starts at a fixed epoch: a **reconstruction** (null: stage 1 only).
    stage2_start_epoch: int | None = None
    # Stage of the image-score head at test time. null: the stage the checkpoint was trained to (the authors'
    # released files: 2, test.py's rule for a file not named epoch_post_*_{stage}.pth).
    test_stage: int | None = None
    # Test-time rule (calcuate_metric_pixel, alpha 0.5, sigm 8): maps smoothed by a Gaussian (sigma 8); image
    # score per category 0.5 * minmax(mean anomaly probability) + 0.5 * minmax(mean of the top-k pixels of
    # the unsmoothed map), k = 2000, or 20 for few_pixel_categories.
    gaussian_sigma: float = 8.0
    image_score_alpha: float = 0.5
    top_k: int = 2000
    few_pixel_top_k: int = 20
    few_pixel_categories: list[str] = dataclasses.field(default_factory=_few_pixel_categories)
    category_words: dict[str, str] = dataclasses.field(default_factory=_authors_category_words)
    # Training augmentation of their dataset class (datasets.py, mode "train"): "authors" = the albumentations
    # pipeline Rotate(30) / RandomRotate90 / RandomBrightnessContrast / GaussNoise / OneOf(Blur, ColorJitter,
    # GaussianBlur), each p=0.5, on the full-size image before the resize, and on MVTec AD the 2x2 mosaic of
    # four anomalous images of the category (mosaic_rate: their aug_rate 0.4). "none": no augmentation.
    # Memory only, same numbers: recompute the text blocks' activations in the backward pass (every image
    # sends 2 x bank prompts through the text tower with gradients; benchmarks/memory_bayes_pfl.py).
    checkpoint_text_blocks: bool = False
    augmentation: str = "authors"
    mosaic_rate: float = 0.4
    # Frozen image features encoded once and reused (lightning_modules/feature_cache.py): only without the
    # augmentation, which changes the training images every epoch (the authors' protocol bypasses it).
    cache_features: bool = True
    cache_dir: str | None = None
    cache_max_gb: float | None = None
    mosaic_datasets: list[str] = dataclasses.field(
        default_factory=lambda: ["mvtec"]
    )  # their `dataset == "mvtec"`
