"""AnomalyDINO in Lightning: batched, training-free evaluation under the few-shot protocol (the runner's
references, ``set_references``); anomalib's preprocessing (spec.py). Without references (``protocol.shots=0``,
the transductive protocol) the authors' batched zero-shot: an epoch first extracts every image's patches and
foreground mask on this process, gathers each category's from every process as soon as the category is
complete (padding duplicates dropped, sorted by image path: the same rows everywhere), scores the whole
category (batched.py) and then hands each batch's precomputed distances and scores to the evaluator, as
MuSc's module does."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from datamodules.errors import ZsadError
from datamodules.index import known_category_names
from lightning_modules.anomalydino.batched import category_scores
from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.anomalydino.model import AnomalyDINO
from lightning_modules.category_module import TrainingFreeModule
from lightning_modules.eval_config import EvalConfig
from lightning_modules.transductive import (
    Populations,
    first_copies,
    gather_rows,
    own_loader,
    population_stream,
)

log = logging.getLogger(__name__)


class AnomalyDINOModule(TrainingFreeModule):
    """``predict_batch`` scores each image against its category's references; no texts (the category ids
    only select the memory)."""

    method_name = "anomalydino"

    def __init__(
        self, cfg: AnomalyDINOConfig, eval_cfg: EvalConfig | None = None, model: AnomalyDINO | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model if model is not None else AnomalyDINO(cfg))
        self._warned: set[tuple[str, ...]] = set()
        # batched zero-shot: sample_id -> (patch distances [N], image score) of every sample of the categories
        # scored (a padding duplicate of a finished category needs its result too)
        self._scored: dict[int, tuple[torch.Tensor, float]] = {}

    def use_datamodule_categories(self) -> None:
        """Which of the datamodule's categories are foreground-masked (before the references are read).
        The lists may name categories of other datasets (the authors' preset names MVTec AD's and VisA's
        together), so a name is not refused: one that no category here nor of any known dataset has is
        most likely a typo that would silently leave its category unmasked or unrotated, and is warned."""
        names = self.cfg.masked_categories
        categories = self.trainer.datamodule.categories
        folders = self.trainer.datamodule.category_folders
        known = set(categories) | set(folders) | known_category_names()
        for key in ("masked_categories", "rotated_categories"):
            unknown = sorted(set(getattr(self.cfg, key) or []) - known)
            if unknown and self.trainer.is_global_zero and (key, *unknown) not in self._warned:
                self._warned.add((key, *unknown))  # once per run, not per target and draw
                log.warning(
                    "method.%s names %s, a category of no known dataset and not of this one (%s): a typo? "
                    "it changes nothing",
                    key,
                    ", ".join(unknown),
                    ", ".join(categories),
                )
        masked = [i for i in range(len(categories)) if _named(names, categories[i], folders[i])]
        self.model.set_masked_categories(masked if self.cfg.masking else [])

    def on_test_epoch_start(self) -> None:
        self.use_datamodule_categories()  # the references' memory depends on it
        super().on_test_epoch_start()
        self._scored = {}
        if self.references is None:  # protocol.shots=0: batched zero-shot (``zsad predict`` too)
            self._warn_about_reference_keys()
            self._score_all()

    def _warn_about_reference_keys(self) -> None:
        """The batched zero-shot pass has no references: a reference key set away from its default there
        changes nothing, and is warned once per run (it would otherwise look like part of the setting)."""
        cfg, defaults = self.cfg, AnomalyDINOConfig()
        inert = [
            f"{key}={getattr(cfg, key)}"
            for key in ("num_neighbours", "rotate_references")
            if getattr(cfg, key) != getattr(defaults, key)
        ]
        if inert and self.trainer.is_global_zero and ("inert", *inert) not in self._warned:
            self._warned.add(("inert", *inert))
            log.warning(
                "method.%s: a few-shot key that the batched zero-shot pass (protocol.shots=0, no references) "
                "does not use; it changes nothing here",
                ", method.".join(inert),
            )

    # --- batched zero-shot (the transductive protocol) ------------------------------------------------
    def _score_all(self) -> None:
        loader = own_loader(self.trainer, "AnomalyDINO")
        populations = Populations.of(self.trainer.datamodule)
        self.score_without_references(loader, populations, populations.expected(loader))

    @torch.no_grad()
    def score_without_references(
        self,
        loader: Iterable[dict[str, Any]],
        populations: Populations,
        expected: Sequence[frozenset[int]] | None = None,
    ) -> None:
        """The batched zero-shot pass over this process's ``loader``: every test population's images (a
        category, or MVTec LOCO's rows of one object together, each image once; gathered from every process,
        ordered by path) scored against each other, each population once its ``expected`` samples have
        arrived (None: at the end; transductive.population_stream); :meth:`predict_batch` then hands out the
        samples' results."""
        self._scored = {}

        def extract(batch: dict[str, Any]) -> list[tuple[int, int, tuple[torch.Tensor, torch.Tensor]]]:
            images = batch["image"].to(self.device)
            features = self.model.encode(images)
            keep = self.model.foreground(
                batch["category_id"], features, self.model.encoder.grid_of(tuple(images.shape[-2:]))
            )
            samples = batch["sample_id"].tolist()
            return [
                (sample, populations.of_sample[sample], (features[i].cpu(), keep[i].cpu()))
                for i, sample in enumerate(samples)
            ]

        cfg = self.cfg
        for _, items in population_stream(loader, populations.count, extract, expected):
            samples, blocks, masks = self._gather(
                [(s, f, k) for s, (f, k) in items], self.model.encoder.vit.embed_dim
            )
            if not samples:
                continue
            keep, image_of = populations.by_image(samples)
            distances, scores = category_scores(
                torch.cat([blocks[i] for i in keep]).to(self.device),
                [len(blocks[i]) for i in keep],
                torch.cat([masks[i] for i in keep]).to(self.device),
                cfg.batched_quantile,
                cfg.top_fraction,
                cfg.batched_guards,
            )
            for sample, image in zip(samples, image_of, strict=True):  # a padding duplicate needs it too
                self._scored[sample] = (distances[image].cpu(), float(scores[image]))

    def _gather(
        self, items: list[tuple[int, torch.Tensor, torch.Tensor]], width: int
    ) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        """The category's (sample ids, patch features [N_i, D], foreground [N_i]) of every process, padding
        duplicates dropped (the first copy kept)."""
        samples = torch.tensor([s for s, _, _ in items], dtype=torch.long)
        counts = torch.tensor([len(f) for _, f, _ in items], dtype=torch.long)
        features = torch.cat([f for _, f, _ in items]) if items else torch.zeros(0, width)
        keep = (
            torch.cat([k for _, _, k in items]).to(torch.uint8)
            if items
            else torch.zeros(0, dtype=torch.uint8)
        )
        samples, counts, features, keep = gather_rows([samples, counts, features, keep], self.device)
        sizes = counts.tolist()
        blocks, masks = features.split(sizes), keep.bool().split(sizes)
        kept = first_copies(samples)
        return [int(samples[i]) for i in kept], [blocks[i] for i in kept], [masks[i] for i in kept]

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.references is not None:
            return super().predict_batch(batch)
        samples = batch["sample_id"].tolist()
        missing = [s for s in samples if s not in self._scored]
        if missing:
            raise ZsadError(
                f"AnomalyDINO has no batched zero-shot scores for samples {missing}: the pass did not see them"
            )
        distances = torch.stack([self._scored[s][0] for s in samples]).to(self.device)
        scores = torch.tensor([self._scored[s][1] for s in samples], device=self.device)
        size = tuple(batch["mask"].shape[-2:])
        return scores, self.model.anomaly_maps(distances, tuple(batch["image"].shape[-2:]), size)

    def load_references(self) -> None:
        """The base's loading, with each reference also rotated by ``rotation_angles`` where
        ``rotate_references`` applies to the category (the authors' augmentation, before preprocessing)."""
        self.clear_references()
        if self.references is None:
            return
        cfg = self.cfg
        datamodule = self.trainer.datamodule
        for category_id, category in enumerate(datamodule.categories):
            folder = datamodule.category_folders[category_id]
            rotate = cfg.rotate_references and _named(cfg.rotated_categories, category, folder)
            stacks = self.references.images_by_size(category, list(cfg.rotation_angles) if rotate else None)
            self.set_references(category_id, [stack.to(self.device) for stack in stacks])

    def set_references(self, category_id: int, images: torch.Tensor | list[torch.Tensor]) -> None:
        self.model.set_references(category_id, images)

    def clear_references(self) -> None:
        self.model.clear_references()


def _named(names: list[str] | None, category: str, folder: str) -> bool:
    """Whether a category list (None: every category) names the category: by its id or by its folder (the
    config says folder names; MVTec LOCO's rows ``breakfast_box_logical`` are the folder ``breakfast_box``)."""
    return names is None or category in names or folder in names
