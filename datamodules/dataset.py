"""A torch dataset over a :class:`DatasetIndex`."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.errors import DatasetLayoutError
from datamodules.images import open_image, open_mask, region_files
from datamodules.index import DatasetIndex, SampleRecord
from datamodules.regions import load_regions
from datamodules.transforms import ImageMaskTransform


class AnomalyDataset(Dataset):
    """Items are dicts; ``sample_id`` is the position in the index, so metrics can drop the duplicates
    that a padding distributed sampler adds.

    Two extra keys where the index has them: ``group_id`` (multi-view datasets: the index of the record's
    physical sample among the sorted sample names, -1 for none) for the sample-level metrics, and, with
    ``with_regions`` for a dataset with region rules (MVTec LOCO, AutoVI), ``regions`` (R, E, E) bool: each
    defect region resized like a mask, padded with empty ones to the split's largest R, and
    ``region_saturation`` (R,) float64: their saturation areas at the evaluated size (0 for padding). The
    ``mask`` of such an image is then the union of its resized regions, so that every pixel metric and
    sPRO see the same anomaly-free pixels."""

    def __init__(
        self,
        index: DatasetIndex,
        transform: ImageMaskTransform,
        categories: list[str] | None = None,
        with_regions: bool = False,
    ) -> None:
        self.index = index
        self.records = index.records
        self.transform = transform
        self.categories = categories if categories is not None else index.categories()
        self._category_ids = {c: i for i, c in enumerate(self.categories)}
        groups = sorted({r.group for r in self.records if r.group is not None})
        self._group_ids = {g: i for i, g in enumerate(groups)} if groups else None
        self.max_regions = 0
        if with_regions and index.region_rules:
            self.max_regions = max(
                (len(region_files(r.mask_path)) for r in self.records if self._has_regions(r)), default=0
            )

    def __len__(self) -> int:
        return len(self.records)

    def transform_for(self, position: int) -> ImageMaskTransform:
        """The transform of the item at ``position`` (one for all here; per source in a multi-source set)."""
        return self.transform

    def _has_regions(self, record: SampleRecord) -> bool:
        return (
            record.category in self.index.region_rules
            and record.mask_path is not None
            and record.mask_path.is_dir()
        )

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
        return self.item(i, *self.transform(image, mask), image_size=image.size)

    def item(
        self,
        i: int,
        image_tensor: torch.Tensor,
        mask_tensor: torch.Tensor,
        image_size: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """The item of record ``i`` from its transformed image and mask (an augmented copy included)."""
        record = self.records[i]
        item = {
            "image": image_tensor,
            "mask": mask_tensor,
            "label": torch.tensor(record.label, dtype=torch.long),
            "category_id": torch.tensor(self._category_ids[record.category], dtype=torch.long),
            "sample_id": torch.tensor(i, dtype=torch.long),
            # A normal image of a dataset with masks has an (empty) ground truth; datasets without masks have none.
            "has_mask": torch.tensor(self.index.category_has_masks(record.category), dtype=torch.bool),
            "image_path": str(record.image_path),
        }
        if self._group_ids is not None:
            group = -1 if record.group is None else self._group_ids[record.group]
            item["group_id"] = torch.tensor(group, dtype=torch.long)
        if self.max_regions:
            item.update(self._regions(record, image_size, mask_tensor))
        return item

    def _regions(
        self, record: SampleRecord, size: tuple[int, int], mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        regions = torch.zeros(self.max_regions, *mask.shape, dtype=torch.bool)
        saturation = torch.zeros(self.max_regions, dtype=torch.float64)
        if self._has_regions(record):
            pixel_scale = mask.numel() / (size[0] * size[1])
            for k, (array, rule) in enumerate(
                load_regions(record.mask_path, self.index.region_rules[record.category])
            ):
                resized = self.transform.mask(Image.fromarray(array.astype("uint8") * 255, mode="L")) > 0
                regions[k] = resized
                saturation[k] = rule.saturation_area(int(resized.sum()), pixel_scale)
            mask.copy_(regions.any(0).to(mask.dtype))
        return {"regions": regions, "region_saturation": saturation}
