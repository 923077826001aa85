"""One LightningDataModule for every benchmark: an index, a split and the transforms."""

from __future__ import annotations

import functools

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.config import DataConfig
from datamodules.dataset import AnomalyDataset
from datamodules.index import DatasetIndex, build_index, get_dataset_spec
from datamodules.transforms import ImageMaskTransform, TransformSpec


class AnomalyDataModule(L.LightningDataModule):
    """Train on ``cfg.train_split`` (the source's test split in the zero-shot protocol), test on
    ``cfg.test_split``. ``image_size`` comes from the method (the model's input size)."""

    def __init__(self, cfg: DataConfig, image_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_size = image_size
        self.eval_size = cfg.eval_size or image_size
        self.spec = get_dataset_spec(cfg.name)

    @functools.cached_property
    def full_index(self) -> DatasetIndex:
        options = dict(getattr(self.cfg, "options", None) or {})
        return build_index(self.cfg.name, self.cfg.root, **options).select(categories=self.cfg.categories)

    def split_index(self, split: str) -> DatasetIndex:
        return self.full_index.select(split=split)

    @property
    def test_index(self) -> DatasetIndex:
        return self.split_index(self.cfg.test_split)

    @property
    def categories(self) -> list[str]:
        return self.full_index.categories()

    @property
    def domain(self) -> str:
        return self.spec.domain

    def _transform(self, train: bool) -> ImageMaskTransform:
        return ImageMaskTransform(
            TransformSpec(
                image_size=self.image_size,
                eval_size=self.eval_size,
                mask_interpolation=self.cfg.mask_interpolation,
                hflip_p=self.cfg.hflip_p if train else 0.0,
            )
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        index = self.split_index(split)
        dataset = AnomalyDataset(index, self._transform(train), categories=self.categories)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size if train else self.cfg.eval_batch_size,
            shuffle=train,
            num_workers=self.cfg.num_workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.cfg.train_split, train=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.cfg.test_split, train=False)
