"""MuSc in Lightning: transductive, training-free evaluation of whole categories.

A test (or predict) epoch first runs this process's own loader once to extract every image's features,
scoring each category against *all* its test images as soon as the loader has given all of them (one
category's features held at a time for a loader in category order: lightning_modules/transductive.py), whatever the batch size or the number of
processes: under DDP each process extracts its share, the category's features are gathered on every
process (padding duplicates dropped, sorted by image path: the same tensors everywhere), and every process
scores the whole category identically. The test steps then hand each batch's precomputed maps and scores
to the evaluator and callbacks like any other method (docs/methods.md#musc).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule
from lightning_modules.category_module import backbone_identity
from lightning_modules.eval_config import EvalConfig
from lightning_modules.musc.config import MuScConfig
from lightning_modules.musc.model import MuSc, divide_subsets
from lightning_modules.transductive import (
    Populations,
    first_copies,
    gather_rows,
    own_loader,
    population_stream,
)


class MuScModule(ZeroShotModule):
    method_name = "musc"

    def __init__(
        self, cfg: MuScConfig, eval_cfg: EvalConfig | None = None, model: MuSc | None = None
    ) -> None:
        super().__init__(eval_cfg)
        self.cfg = cfg
        self.model = model if model is not None else MuSc(cfg)
        # sample_id -> (patch grid [patches] float64, image score) of every sample of the categories scored
        self._scored: dict[int, tuple[torch.Tensor, float]] = {}

    # --- nothing to train -------------------------------------------------------------------------
    def _no_training(self) -> ZsadError:
        return ZsadError(
            "method 'musc' is training-free: evaluate it with `zsad run` or `zsad test` (no checkpoint)"
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        raise self._no_training()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        raise self._no_training()

    def checkpoint_identity(self) -> dict[str, Any]:
        return {
            "method": self.method_name,
            "backbone_family": self.cfg.backbone_family,
            "backbone": backbone_identity(self.cfg.active_backbone()),
        }

    # --- the transductive pass --------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._score_all()  # (``zsad predict`` comes here too, through on_predict_epoch_start)

    def _loader(self) -> Iterable[dict[str, Any]]:
        """This process's share of the epoch's images, in a loader of its own (lightning_modules/transductive.py)."""
        return own_loader(self.trainer, "MuSc")

    def _k_list(self) -> list[int]:
        """The protocol's (the runner sets it per target from spec.dataset_protocol), else by dataset name."""
        if self.method_protocol and "k_list" in self.method_protocol:
            return list(self.method_protocol["k_list"])
        return self.cfg.k_list_for(getattr(self.trainer.datamodule.cfg, "name", None))

    def _score_all(self) -> None:
        """Each test population's images (a category, or MVTec LOCO's rows of one object together, each
        image once: transductive.Populations) scored against each other once this process's loader has given
        all of them (transductive.population_stream: one population's tokens held at a time for a loader in
        category order), gathered from every process and ordered by image path."""
        loader = self._loader()
        datamodule = self.trainer.datamodule
        records = datamodule.test_index.records
        populations = Populations.of(datamodule)
        k_list = self._k_list()

        def extract(batch: dict[str, Any]) -> list[tuple[int, int, tuple[list[torch.Tensor], torch.Tensor]]]:
            tokens, embeddings = self.model.extract(batch["image"].to(self.device))
            samples = batch["sample_id"].tolist()
            return [
                (sample, populations.of_sample[sample], ([t[i].cpu() for t in tokens], embeddings[i].cpu()))
                for i, sample in enumerate(samples)
            ]

        self._scored = {}
        size = self._mask_size()
        expected = populations.expected(loader)
        for _, items in population_stream(loader, populations.count, extract, expected):
            samples, tokens, embeddings = self._gather([(s, t, e) for s, (t, e) in items])
            if not len(samples):
                continue
            keep, image_of = populations.by_image(samples.tolist())
            index = torch.as_tensor(keep, dtype=torch.long)
            defects = [records[int(s)].defect_type for s in samples[index]]
            subsets = divide_subsets(defects, self.cfg.divide_num, self.cfg.divide_seed)
            grids, scores = self.model.category_grids_and_scores(
                [t[index].to(self.device) for t in tokens],
                embeddings[index].to(self.device),
                subsets,
                size,
                k_list,
            )
            for sample, image in zip(
                samples.tolist(), image_of, strict=True
            ):  # a padding duplicate needs it too
                self._scored[sample] = (grids[image].cpu(), float(scores[image]))

    def _mask_size(self) -> tuple[int, int]:
        size = self.model.image_size
        return (size, size)

    def _gather(self, items: list[tuple[int, list[torch.Tensor], torch.Tensor]]):
        """The category's (sample ids [N], tokens per layer [N, 1 + patches, width], embeddings [N, D]) of every
        process, padding duplicates dropped (the first copy kept)."""
        layers = self.model.n_layers
        if items:
            samples = torch.tensor([s for s, _, _ in items], dtype=torch.long)
            tokens = [torch.stack([t[layer] for _, t, _ in items]) for layer in range(layers)]
            embeddings = torch.stack([e for _, _, e in items])
        else:
            samples = torch.zeros(0, dtype=torch.long)
            shape = (0, self.model.grid[0] * self.model.grid[1] + 1, self.model.width)
            tokens = [torch.zeros(shape) for _ in range(layers)]
            embeddings = torch.zeros(0, self.model.embedding_dim)
        samples, embeddings, *tokens = gather_rows([samples, embeddings, *tokens], self.device)
        keep = torch.as_tensor(first_copies(samples), dtype=torch.long)
        return samples[keep], [t[keep] for t in tokens], embeddings[keep]

    # --- the steps: precomputed results -----------------------------------------------------------
    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = batch["sample_id"].tolist()
        missing = [s for s in samples if s not in self._scored]
        if missing:
            raise RuntimeError(
                f"MuSc has no scores for samples {missing}: the transductive pass did not see them"
            )
        grids = torch.stack([self._scored[s][0] for s in samples]).to(self.device)
        scores = torch.tensor([self._scored[s][1] for s in samples], device=self.device)
        maps = self.model.upsample(grids, tuple(batch["mask"].shape[-2:]))
        return scores, maps.float()
