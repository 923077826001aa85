"""A torch dataset over a :class:`DatasetIndex`."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.errors import DatasetLayoutError
from datamodules.images import open_image, open_mask
from datamodules.index import DatasetIndex
from datamodules.transforms import ImageMaskTransform


class AnomalyDataset(Dataset):
    """Items are dicts; ``sample_id`` is the position in the index, so metrics can drop the duplicates
    that a padding distributed sampler adds."""

    def __init__(
        self, index: DatasetIndex, transform: ImageMaskTransform, categories: list[str] | None = None
    ) -> None:
        self.index = index
        self.records = index.records
        self.transform = transform
        self.categories = categories if categories is not None else index.categories()
        self._category_ids = {c: i for i, c in enumerate(self.categories)}

    def __len__(self) -> int:
        return len(self.records)

    def transform_for(self, position: int) -> ImageMaskTransform:
        """The transform of the item at ``position`` (one for all here; per source in a multi-source set)."""
        return self.transform

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        image = open_image(record.image_path)
        mask = None
        if record.mask_path is not None:
            mask = open_mask(record.mask_path)
            if mask.size != image.size:
                raise DatasetLayoutError(
                    f"mask {record.mask_path} is {mask.size[0]}x{mask.size[1]} but image {record.image_path} "
                    f"is {image.size[0]}x{image.size[1]}"
                )
        image_tensor, mask_tensor = self.transform(image, mask)
        return {
            "image": image_tensor,
            "mask": mask_tensor,
            "label": torch.tensor(record.label, dtype=torch.long),
            "category_id": torch.tensor(self._category_ids[record.category], dtype=torch.long),
            "sample_id": torch.tensor(i, dtype=torch.long),
            # A normal image of a dataset with masks has an (empty) ground truth; datasets without masks have none.
            "has_mask": torch.tensor(self.index.has_masks, dtype=torch.bool),
            "image_path": str(record.image_path),
        }
