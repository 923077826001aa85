"""VAND's mosaic augmentation: a training image replaced by a 2x2 mosaic of four same-category images.

The authors do this in their MVTec AD dataset class (``aug_rate=0.2``): with that probability an item
becomes four random images of its category (any defect type or good) pasted 2x2 and resized to the input
size, masks alike. zsad's DataModule serves every method, so the mosaic is built on the training batch
inside ``VANDModule.training_step`` from the training dataset: the tiles are loaded in the main process
(four images per mosaic, about 0.8 extra loads per training image at rate 0.2).

Differences [design choice]: tiles are drawn uniformly over the category's images (the authors first draw
a defect type, then an image), and the already resized tiles are combined by area downsampling rather
than resizing the pasted originals; the mosaic's image label is that of any anomalous tile.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F


def mosaic_2x2(tiles: list[torch.Tensor]) -> torch.Tensor:
    """Four ``[C, H, W]`` tiles in reading order -> one ``[C, H, W]`` mosaic (2x2 area downsampling)."""
    if len(tiles) != 4:
        raise ValueError(f"a 2x2 mosaic needs 4 tiles, got {len(tiles)}")
    top = torch.cat(tiles[:2], dim=-1)
    bottom = torch.cat(tiles[2:], dim=-1)
    grid = torch.cat([top, bottom], dim=-2)
    return F.interpolate(grid[None].float(), size=tiles[0].shape[-2:], mode="area")[0]


class SameCategoryMosaic:
    """Applies the mosaic to a share ``rate`` of a batch's images, drawing tiles from ``dataset``.

    ``dataset`` is the training :class:`~datamodules.dataset.AnomalyDataset` (items are dicts with image,
    mask, label and category_id); ``torch``'s global generator draws, so runs are seeded by ``seed``.
    """

    def __init__(self, dataset: Any, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"mosaic rate must lie in [0, 1], got {rate}")
        self.dataset = dataset
        self.rate = rate
        category_index = {name: i for i, name in enumerate(dataset.categories)}
        self.by_category: dict[int, list[int]] = defaultdict(list)
        for position, record in enumerate(dataset.records):
            self.by_category[category_index[record.category]].append(position)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        chosen = (torch.rand(len(batch["image"])) < self.rate).nonzero().flatten().tolist()
        if not chosen:
            return batch
        images, masks, labels = batch["image"].clone(), batch["mask"].clone(), batch["label"].clone()
        for i in chosen:
            pool = self.by_category[int(batch["category_id"][i])]
            items = [self.dataset[pool[j]] for j in torch.randint(len(pool), (4,)).tolist()]
            images[i] = mosaic_2x2([item["image"] for item in items]).to(images)
            masks[i] = (mosaic_2x2([item["mask"][None] for item in items])[0] > 0.5).to(masks)
            labels[i] = max(int(item["label"]) for item in items)
        return {**batch, "image": images, "mask": masks, "label": labels}
