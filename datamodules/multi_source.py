"""Training on several source datasets at once (AdaCLIP's MVTec AD + ColonDB; docs/datasets.md).

Each source keeps what makes it itself: its parser, root, options, split, categories and the method's
preprocessing for that dataset (``ZeroShotModule.dataset_preprocessing``) with its own data-config
overrides. :class:`MultiSourceDataModule` joins the sources' training splits into one
:class:`CombinedTrainingSet`, shuffled as one set by :mod:`datamodules.resumable`'s (seed, epoch)
permutation, so a resumed run continues exactly. Category ids stay the sources' own unless two sources
share one; those become ``dataset:category`` in ``categories`` (``category_folders`` keeps the ids as the
datasets name them, for prompts).

It only trains: evaluation is per target, each with its own :class:`AnomalyDataModule`. Its training
files form one fingerprint (checkpoints record it; a resume onto other files is refused).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from datamodules.augment import AugmentedDataset
from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule, resumable_train_loader
from datamodules.dataset import AnomalyDataset
from datamodules.errors import ConfigError, ZsadError
from datamodules.fingerprint import digest, relative_name
from datamodules.index import DatasetIndex, SampleRecord
from datamodules.resumable import derived_seed
from datamodules.transforms import ImageMaskTransform

# What the combined loader takes from the data configs: every source must say the same (a ConfigError
# names the key otherwise); eval_size is the training masks' size, which one batch must share.
SHARED_LOADER_KEYS = ("batch_size", "num_workers", "pin_memory", "eval_size")


def source_identity(dataset: str, index: DatasetIndex) -> str:
    """What seeds a source's training augmentation besides the run's seed: its dataset and its training
    images (paths below its root), not its position among the sources, so adding or reordering other
    sources leaves its augmentations as they were (and a copy of it elsewhere gives the same)."""
    names = sorted(relative_name(r.image_path, Path(index.root)) for r in index.records)
    return f"{dataset}:{hashlib.sha256(json.dumps(names).encode()).hexdigest()}"


class CombinedTrainingSet(Dataset):
    """The sources' training datasets one after another; items keep their source's transform, their
    ``category_id`` indexes the combined category list and ``sample_id`` is the position in this set."""

    def __init__(self, parts: Sequence[AnomalyDataset]) -> None:
        self.parts = list(parts)
        # a source with a seeded augmentation (datamodules/augment.py) takes the epoch with the index
        self.takes_epoch = any(getattr(part, "takes_epoch", False) for part in self.parts)
        self.records: list[SampleRecord] = [r for part in self.parts for r in part.records]
        self.categories = self.parts[0].categories
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, position: int) -> tuple[AnomalyDataset, int]:
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} outside 0..{len(self) - 1}")
        part = bisect.bisect_right(self.offsets, position) - 1
        return self.parts[part], position - self.offsets[part]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, position = key if isinstance(key, tuple) else (0, key)
        part, local = self._locate(position)
        item = part[(epoch, local)] if getattr(part, "takes_epoch", False) else part[local]
        item["sample_id"] = item["sample_id"] + (position - local)
        item.pop("group_id", None)  # multi-view sources' sample groups: evaluation only, not in every source
        return item

    def transform_for(self, position: int) -> ImageMaskTransform:
        return self._locate(position)[0].transform


def source_keys(parts: Sequence[AnomalyDataModule]) -> list[str]:
    """A name per source: the dataset's, ``dataset@folder`` when a dataset comes twice (as results name
    targets), ``dataset#i`` when even the folders agree."""
    names = [p.cfg.name for p in parts]
    keys = [
        n if names.count(n) == 1 else f"{n}@{Path(p.cfg.root).name}"
        for n, p in zip(names, parts, strict=True)
    ]
    return [k if keys.count(k) == 1 else f"{k}#{i}" for i, k in enumerate(keys)]


def _qualified(index: DatasetIndex, key: str, shared: set[str]) -> DatasetIndex:
    """``index`` with the categories two sources share renamed ``{key}:{category}`` (in its records and in
    what it says per category)."""
    if not shared:
        return index

    def name(category: str) -> str:
        return f"{key}:{category}" if category in shared else category

    return dataclasses.replace(
        index,
        records=[dataclasses.replace(r, category=name(r.category)) for r in index.records],
        region_rules={name(c): rules for c, rules in index.region_rules.items()},
        mask_free_categories=frozenset(name(c) for c in index.mask_free_categories),
    )


def combined_fingerprint(fingerprints: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several fingerprints as one: each file named by its path below the roots' common folder."""
    root = Path(os.path.commonpath([f["root"] for f in fingerprints]))
    files = {
        Path(os.path.relpath(Path(f["root"]) / name, root)).as_posix(): entry
        for f in fingerprints
        for name, entry in f["files"].items()
    }
    contents = sorted({f["content"] for f in fingerprints})
    return {
        "format": fingerprints[0]["format"],
        "root": str(root),
        "content": contents[0] if len(contents) == 1 else "; ".join(contents),
        "files": files,
        "bytes": sum(entry[0] for entry in files.values()),
        "digest": digest(files),
    }


class MultiSourceDataModule(L.LightningDataModule):
    """The training data of several sources (each an :class:`AnomalyDataModule` with its own preprocessing)
    as one shuffled training set; the interface methods use while fitting (``categories``,
    ``category_folders``, ``category_datasets``, ``full_index``, ``train_dataset``, the feature cache's)."""

    def __init__(self, parts: Sequence[AnomalyDataModule], seed: int | None = None) -> None:
        super().__init__()
        if len(parts) < 2:
            raise ValueError("a multi-source datamodule needs at least two sources")
        self.parts = list(parts)
        self.cfg: DataConfig = self.parts[0].cfg  # the loader keys, which every source shares
        for key in SHARED_LOADER_KEYS:
            values = [getattr(p.cfg, key) for p in self.parts]
            if len(set(values)) > 1:
                names = ", ".join(f"{p.cfg.name}: {v}" for p, v in zip(self.parts, values, strict=True))
                raise ConfigError(
                    f"the training sources disagree on {key} ({names}); one training set has one value: "
                    f"set source.{key}=VALUE (every source) or source.N.{key} alike"
                )
        self.keys = source_keys(self.parts)
        self.seed = self.parts[0].seed if seed is None else seed
        self.image_size = self.parts[0].image_size
        self.eval_size = self.parts[0].eval_size
        self.cached_train_features: Dataset | None = None

    @property
    def name(self) -> str:
        return "+".join(self.keys)

    def _indexes(self, train: bool) -> list[DatasetIndex]:
        """Each source's full index or training split, shared category ids qualified by the source."""
        shared = self._shared_categories
        return [
            _qualified(p.train_index if train else p.full_index, key, shared)
            for p, key in zip(self.parts, self.keys, strict=True)
        ]

    @functools.cached_property
    def _shared_categories(self) -> set[str]:
        counts = collections.Counter(c for p in self.parts for c in dict.fromkeys(p.categories))
        return {c for c, n in counts.items() if n > 1}

    @functools.cached_property
    def full_index(self) -> DatasetIndex:
        """Every source's records (shared category ids qualified), as one index."""
        indexes = self._indexes(train=False)
        return DatasetIndex(
            dataset=self.name,
            root=indexes[0].root,
            records=[r for index in indexes for r in index.records],
            has_masks=any(index.has_masks for index in indexes),
            version="+".join(index.version for index in indexes),
            mask_free_categories=frozenset(
                c
                for index in indexes
                for c in (index.mask_free_categories if index.has_masks else index.categories())
            ),
        )

    @property
    def categories(self) -> list[str]:
        return self.full_index.categories()

    @property
    def category_folders(self) -> list[str]:
        return [c for p in self.parts for c in p.category_folders]

    @property
    def category_datasets(self) -> list[str]:
        return [p.cfg.name for p in self.parts for _ in p.categories]

    @property
    def domain(self) -> str:
        domains = {p.domain for p in self.parts}
        if len(domains) > 1:
            raise ZsadError(
                f"the training sources mix domains ({', '.join(sorted(domains))}); this method needs one"
            )
        return domains.pop()

    @functools.cached_property
    def train_index(self) -> DatasetIndex:
        """The sources' training splits (each source's ``train_split``, or its ``train_shots`` draw) as one
        index."""
        records = [r for index in self._indexes(train=True) for r in index.records]
        return dataclasses.replace(self.full_index, records=records)

    def split_index(self, split: str) -> DatasetIndex:
        """:attr:`train_index` whatever ``split`` says: a multi-source set exists for training only."""
        return self.train_index

    def train_dataset(self) -> CombinedTrainingSet:
        """Each source's training split with its transform and, when its method has one there, its
        training augmentation (seeded per source, epoch and sample)."""
        parts = []
        for part, index in zip(self.parts, self._indexes(train=True), strict=True):
            transform = ImageMaskTransform(part.transform_spec(train=True))
            if part.augmentation is None:
                parts.append(AnomalyDataset(index, transform, categories=self.categories))
                continue
            seed = derived_seed(part.seed, source_identity(part.cfg.name, index), "source")
            parts.append(
                AugmentedDataset(
                    index, transform, categories=self.categories, augmentation=part.augmentation, seed=seed
                )
            )
        return CombinedTrainingSet(parts)

    # --- data identity ----------------------------------------------------------------------------
    @functools.cached_property
    def train_fingerprint(self) -> dict[str, Any]:
        """The sources' training files as one fingerprint (:mod:`datamodules.fingerprint`), named below the
        sources' common folder: what checkpoints record and a resume compares."""
        return combined_fingerprint([p.train_fingerprint for p in self.parts])

    # --- feature cache ----------------------------------------------------------------------------
    def train_cache_identity(self) -> dict[str, Any]:
        return {"sources": [p.train_cache_identity() for p in self.parts], "categories": self.categories}

    def train_cache_bypass_reason(self) -> str | None:
        return next((r for p in self.parts if (r := p.train_cache_bypass_reason())), None)

    def use_cached_train_features(self, dataset: Dataset | None) -> None:
        self.cached_train_features = dataset

    @property
    def num_workers(self) -> int:
        return self.parts[0].num_workers

    # --- loaders ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.cached_train_features is not None:  # in-memory tensors: no worker processes
            return resumable_train_loader(self.cached_train_features, self.cfg, self.trainer, self.seed, 0)
        return resumable_train_loader(
            self.train_dataset(), self.cfg, self.trainer, self.seed, self.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        raise ZsadError("a multi-source datamodule only trains: evaluate each target on its own")
