"""AdaCLIP training (image focal + per-layer focal and Dice on masks, AdamW) and batched evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from datamodules.resumable import derived_seed
from lightning_modules.adaclip.config import AdaCLIPConfig
from lightning_modules.adaclip.model import AdaCLIP
from lightning_modules.category_module import CategoryTextModule, category_words
from lightning_modules.eval_config import EvalConfig
from lightning_modules.mosaic import SameCategoryMosaic

# The cls_name of the authors' dataset classes (dataset/*.py) where it is not zsad's category id; their
# tokenizer lowercases, so "ColonDB" and "colondb" are the same prompt.
AUTHORS_CLASS_NAMES: dict[str, str] = {"brainmri": "brain_mri"}


def authors_class_names(categories: list[str], datasets: list[str]) -> list[str]:
    """The object word of each category in the authors' prompts: their cls_name (the category folder, or
    the dataset's own id for the single-category sets), zsad's category id where they have no class."""
    return [AUTHORS_CLASS_NAMES.get(d, c) if c == d else c for c, d in zip(categories, datasets, strict=True)]


class AdaCLIPModule(CategoryTextModule):
    """Trains the hybrid prompts and linear layers (AdamW, the authors' lr and betas); CLIP stays frozen."""

    method_name = "adaclip"
    identity_fields = (
        "activation",
        "prompting_type",
        "prompting_branch",
        "prompting_depth",
        "prompting_length",
        "prompt_words",
    )

    def __init__(
        self, cfg: AdaCLIPConfig, eval_cfg: EvalConfig | None = None, model: AdaCLIP | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else AdaCLIP(cfg))
        # The runner seeds torch (L.seed_everything(experiment seed)) right before building the module.
        self.seed = int(torch.initial_seed())
        self.mosaic: SameCategoryMosaic | None = None

    def checkpoint_identity(self) -> dict[str, Any]:
        return {**super().checkpoint_identity(), "feature_layers": list(self.model.feature_layers)}

    def use_datamodule_categories(self) -> None:
        datamodule = self.trainer.datamodule
        categories = list(datamodule.category_folders)
        if self.cfg.prompt_words == "authors":
            words = authors_class_names(categories, list(datamodule.category_datasets))
        elif self.cfg.prompt_words == "folder":
            words = categories
        else:
            words = category_words(datamodule)
        self.model.set_classes(words)

    def hsf_seeds(self, batch: dict[str, Any], step: int | None = None) -> list[int]:
        """One k-means seed per image for HSF, from the run's seed, the end of the image's path (its last
        four parts: the same wherever the dataset is stored) and, in training, the step: independent of
        batching and of the process, exact on resume."""
        parts = () if step is None else (step,)
        return [
            derived_seed(self.seed, "adaclip-hsf", *Path(p).parts[-4:], *parts) % 2**32
            for p in batch["image_path"]
        ]

    def on_train_start(self) -> None:
        """The mosaic draws its tiles from the training set, known once the loader exists: only items of
        the ``mosaic_datasets`` sources (the authors' MVTecDataset, aug_rate 0.2)."""
        if self.cfg.mosaic_rate <= 0:
            return
        datamodule = self.trainer.datamodule
        chosen = set(self.cfg.mosaic_datasets)
        ids = [i for i, d in enumerate(datamodule.category_datasets) if d in chosen]
        if ids:
            self.mosaic = SameCategoryMosaic(
                self.trainer.train_dataloader.dataset,
                self.cfg.mosaic_rate,
                style="distinct",
                label="replaced" if self.cfg.mosaic_label == "replaced_item" else "any_tile",
                category_ids=ids,
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.mosaic is not None:
            batch = self.mosaic(batch)
        output = self.model(batch["image"], batch["category_id"], self.hsf_seeds(batch, self.global_step))
        losses = self.model.loss(output, batch["label"], batch["mask"], batch["has_mask"])
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch["label"])
        )
        return losses["loss"]

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image at a time by default (``per_image_test``, as their loop): HSF's scores then do not
        depend on the batch's other images, so any batching or DDP split gives the same numbers."""
        size, seeds = tuple(batch["mask"].shape[-2:]), self.hsf_seeds(batch)
        if not self.cfg.per_image_test:
            return self.model.predict(batch["image"], batch["category_id"], size, seeds)
        outputs = [
            self.model.predict(
                batch["image"][i : i + 1], batch["category_id"][i : i + 1], size, seeds[i : i + 1]
            )
            for i in range(len(seeds))
        ]
        return torch.cat([s for s, _ in outputs]), torch.cat([m for _, m in outputs])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.trainable_parameters(),
            lr=self.cfg.lr,
            betas=tuple(self.cfg.betas),
            weight_decay=self.cfg.weight_decay,
        )
