"""The 2x2 mosaic augmentation of VAND and AdaCLIP: a training image replaced by four same-category images.

The authors do this in their MVTec AD dataset class (``MVTecDataset.combine_img``, ``aug_rate=0.2``): with
that probability an item becomes four images of its category, each drawn by first picking one of the
category's test folders (``good`` or a defect type) and then a file in it; the *full-size* originals are
pasted 2x2 onto an RGB canvas twice the size of the first one (a larger image overlaps the next cell or is
cut at the canvas' edge, as PIL's ``paste``), the masks alike on an "L" canvas of the same size, and the canvas then goes through the ordinary preprocessing (resize to
the input size, masks to the evaluation size). zsad's DataModule serves every method, so the mosaic is built
on the training batch inside ``VANDModule.training_step`` from the training dataset's records and its own
transform (``style="authors"``, the default; four full-size image loads per mosaic).

``style="distinct"`` is AdaCLIP's copy of the same function (``dataset/base_dataset.py combine_img``): four
*distinct* images of the category drawn uniformly (``random.sample(meta_info[cls_name], 4)``), pasted the
same way; a category with fewer than four images keeps its items (their ``random.sample`` would fail).

``style="resized_tiles"`` (zsad's earlier mosaic, a deviation): tiles drawn uniformly over the category's
images and their already preprocessed tensors combined by 2x2 area downsampling. The mosaic's image label is
that of any anomalous tile (``label="any_tile"``; VAND's loss does not use it) or, as AdaCLIP's dataset
returns it, the label of the item it replaces (``label="replaced"``: their ``anomaly`` is read before the
mosaic is made). ``category_ids`` restricts the mosaic to some categories (AdaCLIP: only MVTec AD's, their
one dataset class with ``aug_rate`` 0.2, in a multi-source training set).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from datamodules.mosaic import paste_records

MOSAIC_STYLES = ("authors", "distinct", "resized_tiles")
MOSAIC_LABELS = ("any_tile", "replaced")


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

    ``dataset`` is the training :class:`~datamodules.dataset.AnomalyDataset` or a multi-source training set
    (``records``, ``categories``, ``transform_for(position)``; items are dicts with image, mask, label and
    category_id); ``torch``'s global generator draws, so runs are seeded by ``seed``.
    """

    def __init__(
        self,
        dataset: Any,
        rate: float,
        style: str = "authors",
        label: str = "any_tile",
        category_ids: Sequence[int] | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"mosaic rate must lie in [0, 1], got {rate}")
        if style not in MOSAIC_STYLES:
            raise ValueError(f"mosaic style must be one of {MOSAIC_STYLES}, got {style!r}")
        if label not in MOSAIC_LABELS:
            raise ValueError(f"mosaic label must be one of {MOSAIC_LABELS}, got {label!r}")
        self.dataset = dataset
        self.rate = rate
        self.style = style
        self.label = label
        self.category_ids = None if category_ids is None else frozenset(int(c) for c in category_ids)
        category_index = {name: i for i, name in enumerate(dataset.categories)}
        self.by_category: dict[int, list[int]] = defaultdict(list)
        # category id -> folder (defect type, "good" included) -> positions, in index order
        self.by_folder: dict[int, dict[str, list[int]]] = {}
        for position, record in enumerate(dataset.records):
            category = category_index[record.category]
            self.by_category[category].append(position)
            folders = self.by_folder.setdefault(category, {})
            folders.setdefault(getattr(record, "defect_type", ""), []).append(position)

    def applies_to(self, category_id: int) -> bool:
        if self.category_ids is not None and category_id not in self.category_ids:
            return False
        return self.style != "distinct" or len(self.by_category[category_id]) >= 4

    def draw_tiles(self, category_id: int) -> list[int]:
        """Positions of the four tiles: per tile a folder of the category, then a file of that folder
        (``authors``), four distinct files of the category (``distinct``), or four files of the category
        (``resized_tiles``)."""
        pool = self.by_category[category_id]
        if self.style == "resized_tiles":
            return [pool[j] for j in torch.randint(len(pool), (4,)).tolist()]
        if self.style == "distinct":
            return [pool[j] for j in torch.randperm(len(pool))[:4].tolist()]
        folders = list(self.by_folder[category_id].values())
        tiles = []
        for _ in range(4):
            files = folders[int(torch.randint(len(folders), ()))]
            tiles.append(files[int(torch.randint(len(files), ()))])
        return tiles

    def _transform(self, position: int) -> Any:
        transform_for = getattr(self.dataset, "transform_for", None)
        return transform_for(position) if transform_for is not None else self.dataset.transform

    def compose(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(image, mask, label)`` of the mosaic of the given tiles, preprocessed like any training image
        (with the transform of the first tile's dataset: a category's tiles share one)."""
        if self.style == "resized_tiles":
            items = [self.dataset[p] for p in positions]
            image = mosaic_2x2([item["image"] for item in items])
            mask = mosaic_2x2([item["mask"][None] for item in items])[0] > 0.5
            return image, mask.float(), max(int(item["label"]) for item in items)
        records = [self.dataset.records[p] for p in positions]
        # the authors' paste (datamodules/mosaic.py), through the transform of the first tile's source
        image, mask = self._transform(positions[0])(*paste_records(records))
        return image, mask, max(int(record.label) for record in records)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        draws = torch.rand(len(batch["image"])) < self.rate
        chosen = [
            i for i in draws.nonzero().flatten().tolist() if self.applies_to(int(batch["category_id"][i]))
        ]
        if not chosen:
            return batch
        images, masks, labels = batch["image"].clone(), batch["mask"].clone(), batch["label"].clone()
        for i in chosen:
            image, mask, label = self.compose(self.draw_tiles(int(batch["category_id"][i])))
            images[i] = image.to(images)
            masks[i] = mask.to(masks)
            if self.label == "any_tile":
                labels[i] = label
        return {**batch, "image": images, "mask": masks, "label": labels}
