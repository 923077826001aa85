"""Bayes-PFL training (two stages, manual optimisation as the authors' two Adam optimisers) and batched,
seeded stochastic evaluation in Lightning."""

from __future__ import annotations

import math
from typing import Any

import torch

from datamodules.errors import ConfigError, ZsadError
from lightning_modules.base import OfficialReader, ZeroShotModule, config_fields
from lightning_modules.bayes_pfl.config import BAYES_PFL_AUGMENTATIONS, BayesPFLConfig
from lightning_modules.bayes_pfl.model import BayesPFL, image_score_rule
from lightning_modules.bayes_pfl.official_checkpoint import OFFICIAL_STAGE
from lightning_modules.category_module import backbone_identity
from lightning_modules.checkpoint_io import read_checkpoint
from lightning_modules.eval_config import EvalConfig
from lightning_modules.feature_cache import backbone_cache_identity
from lightning_modules.metrics.category_scores import CategoryScoreRule
from lightning_modules.stochastic import image_keys, key_source

#: config fields that shape the trainable parameters or the texts they were trained against
IDENTITY_FIELDS = (
    "activation",
    "feature_layers",
    "prompt_bank_size",
    "context_length",
    "state_length",
    "num_flows",
)
STAGE_KEY = "bayes_pfl_stage"  # checkpoint entry: the stage the image-score head was trained to


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """transformers' ``get_cosine_schedule_with_warmup`` factor (half a cosine after a linear warm-up)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * 0.5 * progress)))


def optimizer_groups(
    model: BayesPFL, cfg: BayesPFLConfig
) -> tuple[list[dict[str, Any]], list[torch.nn.Parameter]]:
    """train.py's stage-1 groups (prompts, temperatures, flow parameters, everything else) and the stage-2
    parameters (class_mapping, image_mapping, fuse)."""
    prompts = [model.prompt_context, model.prompt_state_normal, model.prompt_state_abnormal]
    temperatures = [model.temperature_pixel, model.temperature_image]
    flows = [
        *(getattr(model.context_flow, f"amor_{x}").weight for x in "uwb"),
        *(getattr(model.context_flow, f"amor_{x}").bias for x in "uwb"),
        *(p for flow in (model.normal_flow, model.abnormal_flow) for p in flow.parameters()),
    ]
    listed = {id(p) for p in (*prompts, *temperatures, *flows)}
    others = [p for p in model.trainable_parameters() if id(p) not in listed]
    groups = [
        {"params": prompts, "lr": cfg.lr_prompt},
        {"params": temperatures, "lr": cfg.lr_temperature},
        {"params": flows, "lr": cfg.lr_flow},
        {"params": others, "lr": cfg.lr_linear},
    ]
    head = [*model.class_mapping.parameters(), *model.image_mapping.parameters(), *model.fuse.parameters()]
    return groups, head


def build_optimizers(
    model: BayesPFL, cfg: BayesPFLConfig, total_steps: int
) -> tuple[torch.optim.Adam, torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """train.py's ``optimizer_stage1`` (its groups) with the warm-up cosine schedule over ``total_steps``
    (their ``len(loader) * epochs``) and ``optimizer_stage2`` (the image head, constant rate)."""
    groups, head = optimizer_groups(model, cfg)
    betas = tuple(cfg.betas)
    stage1 = torch.optim.Adam(groups, lr=cfg.lr_linear, betas=betas)
    stage2 = torch.optim.Adam([{"params": head, "lr": cfg.lr_linear}], lr=cfg.lr_linear, betas=betas)
    warmup = int(cfg.warmup_fraction * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        stage1, lambda step: cosine_with_warmup(step, warmup, total_steps)
    )
    return stage1, stage2, schedule


class BayesPFLModule(ZeroShotModule):
    """Stage 1 trains the prompt bank, flows, RCA and heads; stage 2 (from ``stage2_start_epoch``) only the
    image-score head with its own Adam, as the authors. The CLIP weights never enter an optimiser."""

    method_name = "bayes_pfl"

    def __init__(
        self, cfg: BayesPFLConfig, eval_cfg: EvalConfig | None = None, model: BayesPFL | None = None
    ) -> None:
        super().__init__(eval_cfg)
        if cfg.augmentation not in BAYES_PFL_AUGMENTATIONS:
            raise ConfigError(
                f"augmentation must be one of {BAYES_PFL_AUGMENTATIONS}, got {cfg.augmentation!r}"
            )
        if cfg.test_samples < 1:
            raise ConfigError(f"test_samples must be at least 1, got {cfg.test_samples}")
        if cfg.test_stage not in (None, 1, 2):
            raise ConfigError(f"test_stage must be 1, 2 or null, got {cfg.test_stage}")
        self.cfg = cfg
        self.model = model if model is not None else BayesPFL(cfg)
        self.automatic_optimization = False  # two optimisers, switched by epoch (their stage 1 / stage 2)
        self.trained_stage = 0  # 0: untrained; set by training and by loading a checkpoint
        self.target_name = ""  # the dataset being tested: part of each image's sampling key

    @property
    def image_size(self) -> int:
        return self.cfg.backbone.image_size

    def checkpoint_identity(self) -> dict[str, Any]:
        fields = config_fields(self.cfg, IDENTITY_FIELDS)
        return {"method": self.method_name, "backbone": backbone_identity(self.cfg.backbone), **fields}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[STAGE_KEY] = self.trained_stage

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.trained_stage = int(checkpoint.get(STAGE_KEY, 1))

    def load_trained_weights(
        self, path: str, official_format: OfficialReader | None = None, checkpoint: Any = None
    ) -> None:
        """As every module's, and the stage: a zsad checkpoint's own, the authors' files' 2 (their test.py)."""
        if checkpoint is None:
            checkpoint = read_checkpoint(path)
        super().load_trained_weights(path, official_format, checkpoint)
        if "state_dict" in checkpoint:
            self.trained_stage = int(checkpoint.get(STAGE_KEY, 1))
        else:
            self.trained_stage = OFFICIAL_STAGE

    # --- feature cache: the frozen image features are the same every epoch (without augmentation) -------
    def feature_cache_identity(self) -> dict[str, Any]:
        return {
            "method": self.method_name,
            "backbone": backbone_cache_identity(self.cfg.backbone),
            "feature_layers": list(self.cfg.feature_layers),
            "activation": self.cfg.activation,
        }

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.encode_images(images)

    def feature_cache_bypass_reason(self) -> str | None:
        return None  # the datamodule's: its training augmentation (the spec's) changes images every epoch

    # --- training ---------------------------------------------------------------------------------------
    def stage_of(self, epoch: int) -> int:
        start = self.cfg.stage2_start_epoch
        return 2 if start is not None and epoch >= start else 1

    def words(self, category_ids: torch.Tensor) -> list[str]:
        categories = self.trainer.datamodule.category_folders  # MVTec LOCO's rows: their object's folder
        mapping = self.cfg.category_words
        return [mapping.get(categories[int(i)], categories[int(i)]) for i in category_ids]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not bool(batch["has_mask"].all()):
            raise ZsadError(
                "Bayes-PFL trains on pixel masks: the source dataset has none (pick one with masks)"
            )
        stage = self.stage_of(self.current_epoch)
        masks, labels = batch["mask"], batch["label"]
        features = batch["features"] if "features" in batch else self.model.encode_images(batch["image"])
        # the authors' order of draws: image-specific [B, D], normal [1, D], abnormal [1, D], then the prompt
        eps = self.model.training_draws(masks.shape[0], masks.device)
        prompt = int(torch.randint(0, self.cfg.prompt_bank_size, (1, 1))[0])
        output = self.model.scores_from_draws(
            features, self.words(batch["category_id"]), tuple(masks.shape[-2:]), prompt, stage, eps
        )
        losses = self.model.loss(output, labels, masks, stage)
        optimizers = self.optimizers()
        stage1, stage2 = optimizers if isinstance(optimizers, list | tuple) else (optimizers, None)
        optimizer = stage1 if stage == 1 else stage2
        optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        optimizer.step()
        self.lr_schedulers().step()  # their scheduler.step() runs every step, in stage 2 too
        self.trained_stage = stage
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=masks.shape[0])
        return losses["loss"]

    def configure_optimizers(self) -> Any:
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        stage1, stage2, schedule = build_optimizers(self.model, self.cfg, total)
        return [stage1, stage2], [{"scheduler": schedule, "interval": "step"}]

    # --- evaluation ---------------------------------------------------------------------------------------
    @property
    def test_stage(self) -> int:
        return self.cfg.test_stage or max(1, self.trained_stage)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.target_name = self.trainer.datamodule.cfg.name

    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self.target_name = getattr(getattr(self.trainer.datamodule, "cfg", None), "name", "images")

    def image_score_rule(self) -> CategoryScoreRule:
        """The authors' image score normalises over the category's test images (the evaluator applies it)."""
        return image_score_rule(self.cfg.image_score_alpha)

    def top_k(self, category_ids: torch.Tensor) -> list[int]:
        categories = self.trainer.datamodule.categories
        few = set(self.cfg.few_pixel_categories)
        return [
            self.cfg.few_pixel_top_k if categories[int(i)] in few else self.cfg.top_k for i in category_ids
        ]

    def test_draws(
        self, paths: list[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image's image-specific draws from its own generator, the image-agnostic ones from the
        target's (docs/methods.md#bayes-pfl): the same for an image whatever batch, worker or process."""
        keys = image_keys(self.target_name, paths, *key_source(self.trainer.datamodule))
        return self.model.test_draws(self.cfg.sampling_seed, self.target_name, keys, device)

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The image scores' parts ``[B, 2]`` (probability, top-k mean) and the maps: the authors' score
        needs every image of the category (:meth:`image_score_rule`)."""
        images = batch["image"]
        features = self.model.encode_images(images)
        eps = self.test_draws(list(batch["image_path"]), images.device)
        size = tuple(batch["mask"].shape[-2:]) if "mask" in batch else (self.image_size, self.image_size)
        probability, raw = self.model.predict_from_draws(
            features, self.words(batch["category_id"]), size, eps, self.test_stage
        )
        components = self.model.image_score_components(probability, raw, self.top_k(batch["category_id"]))
        return components, self.model.smooth(raw)
