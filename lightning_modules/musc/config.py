"""MuSc settings (docs/methods.md#musc); every default is the authors' code (xrli-U/MuSc: configs/musc.yaml,
models/musc.py, models/modules/*), the source of each is named beside it."""

from __future__ import annotations

import dataclasses

from lightning_modules.clip.config import BackboneConfig
from lightning_modules.dino.config import DinoBackboneConfig

# models/musc.py ``k_score``: the RsCIN neighbourhood sizes per dataset (any other dataset: [1, 2, 3])
AUTHORS_K_LISTS = {"visa": [1, 8, 9]}
DEFAULT_K_LIST = [1, 2, 3]
ACTIVATIONS = ("authors", "gelu", "quick_gelu")
# The backbone families of their models/musc.py: "clip" (open_clip, ``backbone``), "dino" and "dinov2" (their
# ``_backbones.load``: Meta's DINO ViT / DINOv2 through torch hub; zsad: timm's ViT, ``dino``)
BACKBONE_FAMILIES = ("clip", "dino", "dinov2")


def _musc_backbone() -> BackboneConfig:
    # configs/musc.yaml: ViT-L-14-336, pretrained openai, img_resize 518 (37 x 37 patches); their factory's
    # resize_pos_embed: F.interpolate bicubic without antialiasing
    return BackboneConfig(
        name="ViT-L-14-336-quickgelu",
        pretrained="openai",
        image_size=518,
        pos_embed_interpolation="bicubic_no_antialias",
    )


def _musc_dino() -> DinoBackboneConfig:
    # scripts/musc_{mvtec_ad,visa,btad}.sh: dinov2_vitl14 at 518 px with feature layers 5 11 17 23 (their best
    # DINOv2 row; the default feature_layers fit it). DINO's and DINOv2's own position-embedding interpolation.
    return DinoBackboneConfig(
        name="vit_large_patch14_dinov2", pretrained="lvd142m", image_size=518, interpolate_offset=0.1
    )


@dataclasses.dataclass
class MuScConfig:
    name: str = "musc"
    # Which backbone extracts the features (their --backbone_name): "clip" (``backbone``, the paper's),
    # "dinov2" or "dino" (``dino``: timm's DINOv2 / DINO ViT with Meta's weights, their dinov2_vit*14 /
    # dino_vitbase8/16). Only the chosen one is built.
    backbone_family: str = "clip"
    backbone: BackboneConfig = dataclasses.field(default_factory=_musc_backbone)
    dino: DinoBackboneConfig = dataclasses.field(default_factory=_musc_dino)
    # MLP activation. "authors": exact GELU whenever backbone.image_size differs from the architecture's
    # native size (their factory rebuilds CLIP from ViT-L-14-336.json, which has no quick_gelu, and loads
    # OpenAI's weights into it), the weights' own activation at the native size; "gelu" / "quick_gelu" force one.
    activation: str = "authors"
    # configs/musc.yaml feature_layers, 0-based as theirs: the residual stream after blocks 6, 12, 18, 24
    # (CLIP); DINOv2: those blocks' outputs after the final LayerNorm (get_intermediate_layers(n=layers)); DINO:
    # the same from get_intermediate_layers(n=max + 1), the last max + 1 blocks indexed by layer, i.e. block
    # layer + depth - 1 - max(layers) (the blocks themselves when the last block is among them, as in their
    # scripts: 2 5 8 11 for ViT-B, 5 11 17 23 for ViT-L)
    feature_layers: list[int] = dataclasses.field(default_factory=lambda: [5, 11, 17, 23])
    r_list: list[int] = dataclasses.field(default_factory=lambda: [1, 3, 5])  # LNAMD degrees (musc.yaml)
    # MSM interval over the other images, ranked by distance (models/musc.py: MSM(topmin_min=0, topmin_max=0.3));
    # a value below 1 is a share of the other images, floored
    topmin_min: float = 0.0
    topmin_max: float = 0.3
    # Subsets scored separately (musc.yaml datasets.divide_num; 1 = the whole category together): each
    # defect type's images shuffled with Python's random.seed(divide_seed) and dealt round-robin
    # (datasets/mvtec.py sub_datasets; seed 42 from examples/musc_main.py)
    divide_num: int = 1
    divide_seed: int = 42
    # RsCIN neighbourhood sizes; null: the authors' per-dataset choice (visa [1, 8, 9], others [1, 2, 3]);
    # a list containing 0 turns re-scoring off (image score = max of the map)
    k_list: list[int] | None = None
    # fp16 autocast of the feature extraction and LNAMD on CUDA, as their torch.cuda.amp.autocast(); nothing
    # on CPU (CUDA autocast is disabled there, in their code too)
    amp: bool = True
    # Elements of one block of the MSM distance matrix (memory and speed, not results: the block layout
    # depends only on the set's size, so every process of a DDP run computes the same blocks); null: 2^26 on
    # a GPU, 2^20 on the CPU (musc/scoring.py distance_block)
    distance_block_elements: int | None = None

    @property
    def input_size(self) -> int:
        """The chosen backbone's input size (square)."""
        return int(self.dino.image_size if self.backbone_family != "clip" else self.backbone.image_size)

    def active_backbone(self) -> BackboneConfig | DinoBackboneConfig:
        return self.dino if self.backbone_family != "clip" else self.backbone

    def k_list_for(self, dataset: str | None) -> list[int]:
        if self.k_list is not None:
            return list(self.k_list)
        return list(AUTHORS_K_LISTS.get((dataset or "").lower(), DEFAULT_K_LIST))
