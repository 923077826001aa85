"""CMG training (unified, on the normal training images of all categories) and batched evaluation."""

from __future__ import annotations

import logging
from typing import Any

import torch

from datamodules.errors import ConfigError, ZsadError
from lightning_modules.base import ZeroShotModule
from lightning_modules.category_module import backbone_identity
from lightning_modules.cmg.cmle import GlobalStructure
from lightning_modules.cmg.config import CMGConfig
from lightning_modules.cmg.model import CMG
from lightning_modules.cmg.texts import ImageTexts
from lightning_modules.eval_config import EvalConfig

log = logging.getLogger(__name__)
RUN_CACHE = "run"  # cmer.cache_dir value meaning {run_dir}/cache/cmer


class CMGModule(ZeroShotModule):
    """Trains only the detector's autoencoder (AdamW). Texts come from the bound datamodule: its
    categories' prompt names and domain, or the captions file."""

    method_name = "cmg"

    def __init__(self, cfg: CMGConfig, eval_cfg: EvalConfig | None = None, model: CMG | None = None) -> None:
        super().__init__(eval_cfg)
        self.cfg = cfg
        self.model = model if model is not None else CMG(cfg)
        self.texts: ImageTexts | None = None
        self.structure: GlobalStructure | None = None

    def checkpoint_identity(self) -> dict[str, Any]:
        """Only what shapes the autoencoder: CMER/CMLE settings may differ between training and test."""
        d = self.cfg.detector
        return {
            "method": self.method_name,
            "backbone": backbone_identity(self.cfg.backbone),
            "feature_layers": list(d.feature_layers),
            "hidden_dim": d.hidden_dim,
            "latent_dim": d.latent_dim,
        }

    # --- data binding -----------------------------------------------------------------------------
    def bind_data(self, datamodule: Any) -> None:
        """Texts of this dataset's images, and the on-disk CMER cache when one is configured."""
        self.texts = ImageTexts.from_datamodule(datamodule, self.cfg.text_template, self.cfg.captions_file)
        cache_dir = self.cfg.cmer.cache_dir
        if cache_dir == RUN_CACHE:  # the folder of the job this module runs in; memory only outside one
            cache_dir = str(self.run_dir / "cache" / "cmer") if self.run_dir is not None else None
        if self.cfg.cmer.enabled:
            self.model.use_relevance_cache_dir(cache_dir)

    def _batch_texts(self, batch: dict[str, Any]) -> list[str]:
        if self.texts is None:
            raise ZsadError(
                "CMG needs its dataset's texts: call module.bind_data(datamodule) before predicting"
            )
        return self.texts.batch_texts(batch["image_path"], batch["category_id"])

    def _training_texts(self, datamodule: Any) -> list[str]:
        records = datamodule.train_index.records
        return [self.texts.text(r.image_path, r.category) for r in records]

    def _check_training_data(self, datamodule: Any) -> None:
        """Catch silent fallbacks: a captions file whose paths match nothing, flips that CMER cannot see."""
        records = datamodule.train_index.records
        if self.cfg.captions_file:
            captioned = sum(self.texts.caption(r.image_path) is not None for r in records)
            if captioned == 0:
                example = records[0].image_path.relative_to(self.texts.root).as_posix()
                raise ConfigError(
                    f"none of the {len(records)} training images has a caption in {self.cfg.captions_file}; "
                    f"paths must be relative to the dataset root {self.texts.root}, e.g. '{example}'"
                )
            if captioned < len(records):
                log.warning(
                    "captions for %d of %d training images; the others use the template",
                    captioned,
                    len(records),
                )
        if self.cfg.cmer.enabled and datamodule.cfg.hflip_p > 0:
            log.warning(
                "CMER relevance is cached per image path: flipped training images get unflipped masks"
            )
        if self.cfg.cmle.enabled and len(datamodule.categories) < 2 and not self.cfg.captions_file:
            log.warning(
                "CMLE on one category with templated texts: every image has the same text, so the matrix is uniform"
            )

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.bind_data(datamodule)
        self._check_training_data(datamodule)
        cmle = self.cfg.cmle
        if cmle.enabled and cmle.scope == "global":
            embeddings = self.model.encode_texts(self._training_texts(datamodule))
            self.structure = GlobalStructure(embeddings, cmle.k, cmle.reg, self.cfg.detector.latent_dim).to(
                self.device
            )

    def on_train_epoch_end(self) -> None:
        self.model.relevance_cache.save()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.bind_data(self.trainer.datamodule)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.model.relevance_cache.save()

    # --- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        needs_texts = self.cfg.cmer.enabled or self.cfg.cmle.enabled
        texts = self._batch_texts(batch) if needs_texts else []
        keep = self.model.keep_mask(images, batch["image_path"], texts)
        output = self.model(images, keep, jitter=True)
        text_embeddings = self.model.encode_texts(texts) if self.cfg.cmle.enabled else None
        losses = self.model.loss(output, text_embeddings)
        if self.structure is not None:
            cmle = self.structure.loss(output.image_codes(self.cfg.cmle.normalize_latent), batch["sample_id"])
            losses["cmle_loss"] = cmle
            losses["loss"] = losses["detector_loss"] + self.cfg.cmle.weight * cmle
        if keep is not None:
            losses["cmer_kept"] = keep.float().mean()
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=images.shape[0])
        return losses["loss"]

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        needs_texts = self.cfg.cmer.enabled and self.cfg.cmer.apply_at_test
        texts = self._batch_texts(batch) if needs_texts else []
        return self.model.predict(batch["image"], tuple(batch["mask"].shape[-2:]), batch["image_path"], texts)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.trainable_parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
