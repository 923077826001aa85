"""AA-CLIP's two training stages in one fit (train.py): the text adapters for ``text_epochs`` epochs, then
the image adapters for ``image_epochs`` epochs, each with its own Adam; evaluation as their test.py."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.errors import ConfigError
from datamodules.index import dataset_names, get_dataset_spec
from lightning_modules.aa_clip.config import AAClipConfig
from lightning_modules.aa_clip.model import IMAGE_SCORE_RULE, AAClip, image_score_parts
from lightning_modules.aa_clip.object_words import authors_object_words
from lightning_modules.category_module import CategoryTextModule, category_words
from lightning_modules.eval_config import EvalConfig
from lightning_modules.metrics.category_scores import CategoryScoreRule


class AAClipModule(CategoryTextModule):
    """Manual optimisation: stage 1 steps the text adapters once per batch (their batch of
    ``text_batch_size``); stage 2 splits each batch into chunks of ``image_batch_size`` and steps the image
    adapters (and their per-step MultiStepLR) once per chunk, as their stage-2 loader of batch 2 does."""

    method_name = "aa_clip"
    identity_fields = (
        "activation",
        "text_adapt_until",
        "image_adapt_until",
        "projection_relu",
        "prompt_words",
    )

    def __init__(
        self, cfg: AAClipConfig, eval_cfg: EvalConfig | None = None, model: AAClip | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else AAClip(cfg))
        self.automatic_optimization = False
        self.register_buffer("category_medical", torch.zeros(0, dtype=torch.bool), persistent=False)

    def checkpoint_identity(self) -> dict[str, Any]:
        return {**super().checkpoint_identity(), "feature_layers": list(self.model.feature_layers)}

    def use_datamodule_categories(self) -> None:
        datamodule = self.trainer.datamodule
        categories, datasets = list(datamodule.category_folders), list(datamodule.category_datasets)
        words = category_words(datamodule)
        if self.cfg.prompt_words == "authors":
            words = authors_object_words(categories, datasets, words)
        self.model.set_classes(words)
        # a benchmark's own domain; images of no benchmark (zsad predict) take the datamodule's
        known = set(dataset_names())
        domains = [get_dataset_spec(d).domain if d in known else datamodule.domain for d in datasets]
        medical = [domain == "medical" for domain in domains]
        self.category_medical = torch.tensor(medical, dtype=torch.bool)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        stages = self.cfg.text_epochs + self.cfg.image_epochs
        if self.trainer.max_epochs != stages:
            raise ConfigError(
                f"AA-CLIP trains {self.cfg.text_epochs} text + {self.cfg.image_epochs} image epochs: set "
                f"trainer.max_epochs={stages} (now {self.trainer.max_epochs}), or change method.text_epochs / "
                "method.image_epochs"
            )

    def on_train_start(self) -> None:
        """Stage 1's batch is the loader's (their text loader: batch ``text_batch_size``)."""
        batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
        if batch_size is not None and batch_size != self.cfg.text_batch_size:
            raise ConfigError(
                f"AA-CLIP's stage 1 trains on batches of method.text_batch_size={self.cfg.text_batch_size}, "
                f"but the training loader's batch size is {batch_size}: set source.batch_size to it"
            )

    def in_text_stage(self) -> bool:
        return self.current_epoch < self.cfg.text_epochs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        text_optimizer, image_optimizer = self.optimizers()
        images, masks, ids = batch["image"], batch["mask"], batch["category_id"]
        adapters = self.model.adapters
        if self.in_text_stage():
            losses = self.model.text_stage_loss(images, masks, ids)
            text_optimizer.zero_grad()
            self.manual_backward(self.with_every_parameter(losses["loss"], adapters.image_adapter))
            text_optimizer.step()
            self.log_dict(
                {f"train/text_{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(ids)
            )
            return losses["loss"].detach()
        scheduler = self.lr_schedulers()
        size, total = self.cfg.image_batch_size, []
        for start in range(0, len(ids), size):
            chunk = slice(start, start + size)
            losses = self.model.image_stage_loss(
                images[chunk], masks[chunk], batch["label"][chunk], ids[chunk]
            )
            image_optimizer.zero_grad()
            self.manual_backward(self.with_every_parameter(losses["loss"], adapters.text_adapter))
            image_optimizer.step()
            scheduler.step()
            total.append(losses["loss"].detach())
        loss = torch.stack(total).mean()
        self.log("train/image_loss", loss, prog_bar=True, batch_size=len(ids))
        return loss

    def with_every_parameter(self, loss: torch.Tensor, idle: torch.nn.Module) -> torch.Tensor:
        """Under DDP, which reduces every trainable parameter in each backward pass, the other stage's
        adapters (``idle``) join the loss with weight 0: their gradients are 0 and their optimiser does not
        step (plain ``ddp`` works, no ``find_unused_parameters``). One process: the loss as it is."""
        if self.trainer.world_size == 1:
            return loss
        return loss + 0.0 * sum(p.sum() for p in idle.parameters())

    def on_train_epoch_start(self) -> None:
        """Entering stage 2 (or resuming in it): the anchors are recomputed from the trained text adapters."""
        if not self.in_text_stage():
            self.model.class_text = None

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Their get_predictions per image, blurred by the domain of the image's dataset; the scores are the
        parts of :meth:`image_score_rule` (score, map maximum and minimum, medical flag) ``[B, 4]``."""
        ids, size = batch["category_id"], tuple(batch["mask"].shape[-2:])
        medical = self.category_medical[ids.cpu()]
        parts = torch.empty(len(ids), 4, device=batch["image"].device)
        maps = torch.empty(len(ids), *size, device=batch["image"].device)
        for flag in medical.unique().tolist():
            chosen = (medical == flag).to(ids.device)
            scores, maps[chosen] = self.model.predict(batch["image"][chosen], ids[chosen], size, bool(flag))
            parts[chosen] = image_score_parts(scores, maps[chosen], bool(flag))
        return parts, maps

    def image_score_rule(self) -> CategoryScoreRule:
        """Their metrics_eval fuses each category's min-max normalised scores and map maxima."""
        return IMAGE_SCORE_RULE

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        adapters, betas = self.model.adapters, tuple(self.cfg.betas)
        text = torch.optim.Adam(adapters.text_adapter.parameters(), lr=self.cfg.text_lr, betas=betas)
        image = torch.optim.Adam(adapters.image_adapter.parameters(), lr=self.cfg.image_lr, betas=betas)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            image, milestones=list(self.cfg.image_lr_milestones), gamma=self.cfg.image_lr_gamma
        )
        return [text, image], [scheduler]
