"""AdaCLIP settings (docs/methods.md#adaclip); every default is the authors' code (caoyunkang/AdaCLIP:
train.py / test.py arguments, method/adaclip.py, method/trainer.py, dataset/*.py)."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig

PROMPTING_TYPES = ("", "S", "D", "SD")  # their --prompting_type: static, dynamic, both (hybrid)
PROMPTING_BRANCHES = ("", "V", "L", "VL")  # their --prompting_branch: visual, language, both
ADACLIP_ACTIVATIONS = ("gelu", "quick_gelu")
ADACLIP_PROMPT_WORDS = ("authors", "folder", "object_word")
DICE_UNITS = ("row", "image")
MOSAIC_LABELS = ("replaced_item", "any_tile")
MASKLESS_PIXEL_LOSSES = ("zeros", "skip")


def _adaclip_backbone() -> BackboneConfig:
    # method/custom_clip.py create_model: OpenAI's ViT-L-14-336 weights into CLIP(**ViT-L-14-336.json) with
    # the image size set to --image_size 518; their resize_pos_embed is F.interpolate(bicubic), no antialias.
    return BackboneConfig(pos_embed_interpolation="bicubic_no_antialias")


@dataclasses.dataclass
class AdaCLIPConfig:
    name: str = "adaclip"
    backbone: BackboneConfig = dataclasses.field(default_factory=_adaclip_backbone)
    # MLP activation of both towers: their create_model always rebuilds the model from model_configs/*.json,
    # which have no quick_gelu, so OpenAI's QuickGELU weights run with exact GELU at every input size
    # (unlike VAND, which keeps OpenAI's model at its native size). "quick_gelu": what the weights were
    # trained with (a deviation).
    activation: str = "gelu"
    # fp16 autocast of the whole forward on CUDA (their AdaCLIP.forward is decorated with
    # torch.cuda.amp.autocast(); the loss is computed outside it). On the CPU it changes nothing, as in
    # their code. false: float32 throughout (their README: fp16 training "can occasionally be unstable").
    fp16_autocast: bool = True
    # Blocks whose patch tokens make the maps (1-indexed); None: the authors' rule, the four quarters of the
    # vision depth (train.py: substage = layers // 4 -> [6, 12, 18, 24] on 24 blocks).
    feature_layers: list[int] | None = None
    prompting_type: str = "SD"  # --prompting_type: "S" static, "D" dynamic, "SD" hybrid, "" none
    prompting_branch: str = "VL"  # --prompting_branch: "V" vision, "L" language, "VL" both, "" none
    prompting_depth: int = 4  # --prompting_depth J: prompts enter the first J blocks of each tower
    prompting_length: int = 5  # --prompting_length: prompt tokens per block
    prompt_init_std: float = 0.02  # static prompts ~ N(0, 0.02^2) (PromptLayer); the Linear layers: torch's
    # Their PromptLayer casts every prompt context to float16 before inserting it (values rounded and, per
    # copy, gradients too: .half()); false keeps them float32 (a deviation).
    round_prompts_fp16: bool = True
    use_hsf: bool = True  # --use_hsf: hybrid semantic fusion image score; false: the class token's
    k_clusters: int = 20  # --k_clusters
    hsf_tokens_per_cluster: int = 5  # HSF clusters the k_clusters * 5 most anomalous patches
    hsf_alpha: float = 0.2  # image feature = alpha * fused patches + (1 - alpha) * class token
    prompt_ensemble: str = "adaclip"  # 7 normal / 5 anomalous states x 4 templates, averaged
    # Object word: "authors", the cls_name of their dataset classes (the category folders of MVTec AD, VisA,
    # MPDD, BTAD, DTD, DAGM; "brain_mri" for BrainMRI; the dataset's id for the single-category sets; zsad's
    # category folder where they have no class); "folder": zsad's category folder (the category id, MVTec
    # LOCO's rows their object's: datamodule.category_folders); "object_word": the dataset's readable prompt
    # name ("metal nut", "colon").
    prompt_words: str = "authors"
    temperature: float = 0.01  # their 100 * cos for image scores and maps
    focal_gamma: float = 2.0
    # Their train_one_batch squeezes the [1, 1, H, W] mask to [H, W], so BinaryDiceLoss treats each image
    # row as a sample ("row": Dice per row, averaged); "image": Dice per image (the loss as written).
    dice_unit: str = "row"
    # Images without pixel ground truth (BrainMRI, HeadCT, Br35H, in their all-datasets model): "zeros", as
    # their dataset classes give every such image an all-zero mask (anomalous ones too), or "skip": the pixel
    # losses leave them out (a deviation).
    maskless_pixel_loss: str = "zeros"
    lr: float = 0.01  # --learning_rate
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.01  # AdamW's default (not set in their trainer)
    gaussian_sigma: float = 4.0  # test maps: scipy gaussian_filter(sigma=4)
    # Test one image at a time, as their loop (batch size 1): HSF's k-means is discontinuous in its input,
    # so in a batch an image's score can depend on the batch's other images (other BLAS blocking moves the
    # embeddings by ~1e-7). false: batched (faster; DDP evaluation is then refused, docs/methods.md#adaclip).
    per_image_test: bool = True
    # 2x2 mosaic (dataset/base_dataset.py combine_img, VAND's): items of these source datasets become,
    # with probability mosaic_rate, four distinct random images of their category (random.sample) pasted
    # full size. Their MVTecDataset defaults to aug_rate 0.2, every other dataset class to 0.
    mosaic_rate: float = 0.2
    mosaic_datasets: list[str] = dataclasses.field(default_factory=lambda: ["mvtec"])
    # The mosaic's image label: "replaced_item", the label of the item it replaces (theirs: `anomaly` is
    # read before combine_img), or "any_tile" (anomalous if any tile is; VAND's rule).
    mosaic_label: str = "replaced_item"
    # Recompute each vision block in the backward pass instead of storing its activations (memory only;
    # same numbers): for ViT-L-14-336 at 518 px on cards below ~16 GB (docs/methods.md#adaclip).
    gradient_checkpointing: bool = False
