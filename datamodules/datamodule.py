"""One LightningDataModule for every benchmark: an index, a split and the transforms.

Methods with a frozen image encoder may hand the datamodule a dataset of cached training features
(:mod:`lightning_modules.feature_cache`); ``train_dataloader`` then iterates over it instead of the images,
with the same batch size and shuffling. The training order is :mod:`datamodules.resumable`'s: a function of
(seed, epoch) that a resumed run continues mid-epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.augment import AugmentedDataset, TrainAugmentation
from datamodules.config import DataConfig
from datamodules.dataset import AnomalyDataset
from datamodules.errors import ConfigError
from datamodules.fingerprint import index_fingerprint
from datamodules.fingerprint import summary as fingerprint_summary
from datamodules.index import DatasetIndex, DatasetSpec, build_index, get_dataset_spec
from datamodules.item_extras import ItemExtras, WithItemExtras
from datamodules.references import ReferenceDraw, ReferenceImages, draw_references
from datamodules.resumable import EpochSampler, ResumableDataLoader
from datamodules.training_shots import training_shots
from datamodules.transforms import ImageMaskTransform, ImagePreprocessing, TransformSpec

MAX_AUTO_WORKERS = 8


def usable_cores(local_processes: int = 1) -> int:
    """CPU cores one of ``local_processes`` training processes on this node may use: ``SLURM_CPUS_PER_TASK``
    when SLURM gave each task its own cores, else the cores this process may run on (its affinity: cgroup,
    ``taskset``) shared equally by the node's processes."""
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        return int(per_task)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


def auto_num_workers(local_processes: int = 1) -> int:
    """Loader workers when ``data.num_workers`` is unset: the usable cores minus one for the process itself,
    at most :data:`MAX_AUTO_WORKERS`. Decoding and resizing a full-size PNG and its mask costs ~30 ms, so a
    GPU that evaluates hundreds of images a second needs several workers; a 1-core process loads in-line."""
    return max(0, min(MAX_AUTO_WORKERS, usable_cores(local_processes) - 1))


PREPROCESSING_KEYS = tuple(field.name for field in dataclasses.fields(ImagePreprocessing))


def preprocessing_for(cfg: DataConfig, method_default: ImagePreprocessing) -> ImagePreprocessing:
    """The method's preprocessing with the data config's set keys (``resize_backend``, ...) applied; a
    combination that the resize cannot do is a one-line ConfigError."""
    try:
        return method_default.with_overrides(**{key: getattr(cfg, key, None) for key in PREPROCESSING_KEYS})
    except ValueError as error:
        raise ConfigError(f"data '{cfg.name}': {error}") from None


def resumable_train_loader(
    dataset: Dataset, cfg: DataConfig, trainer: L.Trainer | None, seed: int, workers: int
) -> ResumableDataLoader:
    """Each process's share of a (seed, epoch) permutation of ``dataset``, in batches; resumable mid-epoch.
    A dataset whose items depend on the epoch (``takes_epoch``: a seeded augmentation) is asked for
    ``(epoch, index)``."""
    world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
    with_epoch = bool(getattr(dataset, "takes_epoch", False))
    return ResumableDataLoader(
        dataset,
        EpochSampler(dataset, num_replicas=world, rank=rank, seed=seed, with_epoch=with_epoch),
        batch_size=cfg.batch_size,
        num_workers=workers,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


class AnomalyDataModule(L.LightningDataModule):
    """Train on ``cfg.train_split`` (the source's test split in the zero-shot protocol), test on
    ``cfg.test_split``. ``image_size`` and ``preprocessing`` come from the method (the model's input size
    and its official code's resize; ``MethodSpec.preprocessing``); the data config's preprocessing keys
    override the latter. ``seed`` orders the training batches of every epoch (default: the seed of
    ``lightning.seed_everything``, else 0)."""

    #: per-image random draws (Bayes-PFL, AnoVL) are keyed by the image's path below the dataset root
    #: (lightning_modules/stochastic.image_keys), so a copy of the dataset elsewhere gives the same numbers
    keys_by_content = False

    def __init__(
        self,
        cfg: DataConfig,
        image_size: int,
        preprocessing: ImagePreprocessing | None = None,
        seed: int | None = None,
        augmentation: TrainAugmentation | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # the method's training augmentation (datamodules/augment.py), seeded per (seed, epoch, sample)
        self.augmentation = augmentation if augmentation is not None and augmentation.active else None
        self.image_size = image_size
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.eval_size = cfg.eval_size or image_size
        self.preprocessing = preprocessing_for(cfg, preprocessing or ImagePreprocessing())
        self.cached_train_features: Dataset | None = None  # set by a method's feature cache (on_fit_start)
        self.train_item_extras: ItemExtras | None = None  # set by a method that adds inputs per item

    @functools.cached_property
    def spec(self) -> DatasetSpec:
        return get_dataset_spec(self.cfg.name)

    @property
    def num_workers(self) -> int:
        """``data.num_workers``, or :func:`auto_num_workers` for the processes of this node's run."""
        if self.cfg.num_workers is not None:
            return self.cfg.num_workers
        trainer = self.trainer  # None until the datamodule is attached to a Trainer
        return auto_num_workers(int(trainer.num_devices) if trainer is not None else 1)

    @functools.cached_property
    def full_index(self) -> DatasetIndex:
        options = dict(getattr(self.cfg, "options", None) or {})
        return build_index(self.cfg.name, self.cfg.root, **options).select(categories=self.cfg.categories)

    def split_index(self, split: str) -> DatasetIndex:
        return self.full_index.select(split=split)

    @functools.cached_property
    def train_index(self) -> DatasetIndex:
        """The training split, or its few-shot draw when ``train_shots`` is set
        (:mod:`datamodules.training_shots`); an image two categories hold (MVTec LOCO's rows) once."""
        index = self.split_index(self.cfg.train_split).once_per_image()
        if self.cfg.train_shots is None:
            return index
        return training_shots(index, self.cfg.train_shots, self.cfg.train_shots_seed)

    @property
    def test_index(self) -> DatasetIndex:
        return self.split_index(self.cfg.test_split)

    @property
    def categories(self) -> list[str]:
        return self.full_index.categories()

    @property
    def category_populations(self) -> list[int]:
        """Per category (``categories`` order), its test population (``DatasetIndex.category_populations``:
        the rows of one object are one)."""
        return self.full_index.category_populations()

    @property
    def category_folders(self) -> list[str]:
        """Each category's folder as its dataset names it (a multi-source training set qualifies ids that two
        sources share in ``categories``; MVTec LOCO's rows are their object's folder): what methods that put
        the folder name into prompts read."""
        rows = self.full_index.row_objects
        return [rows.get(category, category) for category in self.categories]

    @property
    def category_datasets(self) -> list[str]:
        """The dataset each category (``categories`` order) comes from."""
        return [self.cfg.name] * len(self.categories)

    @property
    def domain(self) -> str:
        return self.spec.domain

    def transform_spec(self, train: bool) -> TransformSpec:
        return TransformSpec(
            image_size=self.image_size,
            eval_size=self.eval_size,
            preprocessing=self.preprocessing,
            hflip_p=self.cfg.hflip_p if train else 0.0,
        )

    def _transform(self, train: bool) -> ImageMaskTransform:
        return ImageMaskTransform(self.transform_spec(train))

    def _dataset(self, split: str, train: bool) -> AnomalyDataset:
        index = self.train_index if train else self.split_index(split)
        if train and self.augmentation is not None:
            return AugmentedDataset(
                index,
                self._transform(train),
                categories=self.categories,
                augmentation=self.augmentation,
                seed=self.seed,
            )
        return AnomalyDataset(
            index,
            self._transform(train),
            categories=self.categories,
            with_regions=not train,
        )

    def train_dataset(self) -> AnomalyDataset:
        """The training split's images (what a feature cache encodes once)."""
        return self._dataset(self.cfg.train_split, train=True)

    # --- few-shot references ---------------------------------------------------------------------
    def reference_draws(
        self,
        shots: int,
        seed: int,
        draws: int,
        selection: str = "random",
        listed: list[list[str]] | None = None,
    ) -> list[ReferenceDraw]:
        """``draws`` seeded draws of ``shots`` normal training images per category, none a test image
        (:mod:`datamodules.references`; ``selection="sorted"``: the sorted files block by block; "listed":
        the files ``listed[d]``'s lines name); a ConfigError when the dataset cannot give them."""
        return draw_references(
            self.full_index,
            self.test_index,
            self.categories,
            shots,
            seed,
            draws,
            self.cfg.name,
            selection,
            listed,
        )

    def reference_images(self, draw: ReferenceDraw) -> ReferenceImages:
        """A draw's images, read with the test images' transform (the method's preprocessing)."""
        return ReferenceImages(draw, self._transform(train=False))

    # --- data identity ----------------------------------------------------------------------------
    @functools.cached_property
    def train_fingerprint(self) -> dict[str, Any]:
        """The training split's files (:mod:`datamodules.fingerprint`), computed once: what a run's
        checkpoints record and a resume compares, and part of the feature cache's key."""
        return index_fingerprint(self.train_index)

    @functools.cached_property
    def test_fingerprint_summary(self) -> dict[str, Any]:
        """The test split's fingerprint without its file list: what results and saved maps record."""
        return fingerprint_summary(index_fingerprint(self.test_index))

    # --- feature cache ----------------------------------------------------------------------------
    def train_cache_identity(self) -> dict:
        """What of the data changes cached training features: dataset, root, split, categories, transform,
        and the training files themselves (their fingerprint's digest: other images, other features)."""
        index = self.train_index
        return {
            "dataset": self.cfg.name,
            "root": str(index.root),
            "options": dict(getattr(self.cfg, "options", None) or {}),
            "split": self.cfg.train_split,
            "categories": list(self.categories),
            "n_images": len(index.records),
            "files": self.train_fingerprint["digest"],
            "transform": dataclasses.asdict(self.transform_spec(train=True)),
        }

    def train_cache_bypass_reason(self) -> str | None:
        if self.augmentation is not None:
            return f"the method's training augmentation ({self.augmentation}) changes training images every epoch"
        if self.cfg.hflip_p > 0:
            return f"random horizontal flip (hflip_p={self.cfg.hflip_p}) changes training images every epoch"
        return None

    def use_cached_train_features(self, dataset: Dataset | None) -> None:
        """Serve ``dataset`` (cached features) from :meth:`train_dataloader`; None goes back to the images."""
        self.cached_train_features = dataset

    def set_train_item_extras(self, extras: ItemExtras | None) -> None:
        """Add ``extras(epoch, sample_id, category_id)`` to every training item, made in the loader's workers
        (:mod:`datamodules.item_extras`; AdaptCLIP's prompt images); None: the items alone."""
        self.train_item_extras = extras

    def _train_loader(self, dataset: Dataset, workers: int) -> ResumableDataLoader:
        return resumable_train_loader(dataset, self.cfg, self.trainer, self.seed, workers)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if train:
            return self._training_loader(split)
        dataset = self._dataset(split, train)
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _training_loader(self, split: str) -> ResumableDataLoader:
        extras = self.train_item_extras
        if self.cached_train_features is not None:
            # In-memory tensors: worker processes would only add start-up and copying cost, unless items
            # carry extras read from files.
            dataset, workers = self.cached_train_features, self.num_workers if extras is not None else 0
        else:
            dataset, workers = self._dataset(split, train=True), self.num_workers
        if extras is not None:
            dataset = WithItemExtras(dataset, extras)
        return self._train_loader(dataset, workers)

    @property
    def eval_batch_size(self) -> int:
        """``eval_batch_size``; 1 when images keep their aspect ratio (``resize=short_side``) or masks their
        file's size (``mask_size=original``): images of different shapes cannot be stacked into one batch
        (the authors' loaders have batch size 1)."""
        keeps_shape = self.preprocessing.resize == "short_side" or self.preprocessing.mask_size == "original"
        return 1 if keeps_shape else self.cfg.eval_batch_size

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.cfg.train_split, train=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.cfg.test_split, train=False)
