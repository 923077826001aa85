"""The 2x2 mosaic of Qu et al.'s MVTec AD dataset classes (VCP-CLIP, Bayes-PFL: ``combine_img``), drawn per
training sample, and the authors' paste that VAND's and AdaCLIP's in-step mosaic (lightning_modules/mosaic.py)
shares.

With probability ``rate`` an item becomes four ``random.choice`` draws (with replacement) of its category's
anomalous images with masks (their merged ``test/anomaly`` folder), pasted *full size* in reading order on a
black canvas twice the size of the first one (a larger image overlaps the next cell or is cut at the
canvas' edge, as PIL's ``paste``), the masks alike on an "L" canvas; the canvas then goes through the
method's augmentation and preprocessing like any training image. ``label``: ``replaced`` keeps the replaced
item's label (VCP-CLIP's loss does not use it), ``any_tile`` takes 1 when any tile is anomalous (Bayes-PFL's
``combine_img`` returns ``anomaly = 1``).

The datamodule applies it (:class:`datamodules.augment.AugmentedDataset`), each item drawing from a
``random.Random`` seeded by (run seed, epoch, sample index): the same mosaics whatever the loader's workers,
the processes of a DDP training or the step a resumed run starts from. A method asks for it through its
spec's ``train_augmentation`` (per training dataset: the authors' mosaic is in their MVTec AD class only).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from PIL import Image

from datamodules.images import open_image, open_mask
from datamodules.index import SampleRecord

LABEL_RULES = ("replaced", "any_tile")


@dataclasses.dataclass(frozen=True)
class Mosaic:
    rate: float  # share of items replaced by a mosaic (the authors' aug_rate: VCP-CLIP 0.2, Bayes-PFL 0.4)
    label: str = "replaced"  # one of LABEL_RULES: the mosaic item's image label

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"mosaic rate must lie in [0, 1], got {self.rate}")
        if self.label not in LABEL_RULES:
            raise ValueError(f"mosaic label must be one of {LABEL_RULES}, got {self.label!r}")


def paste_2x2(tiles: list[Image.Image], mode: str, quarter: tuple[int, int]) -> Image.Image:
    """Four PIL images pasted in reading order at the corners of the ``quarter`` (width, height) cells of a
    black ``mode`` canvas twice that size (PIL converts each to the canvas' mode; a tile larger than its
    cell overlaps the next or is cut at the edge, as the authors' ``paste``)."""
    if len(tiles) != 4:
        raise ValueError(f"a 2x2 mosaic needs 4 tiles, got {len(tiles)}")
    width, height = quarter
    canvas = Image.new(mode, (2 * width, 2 * height))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % 2) * width, (i // 2) * height))
    return canvas


def paste_records(records: Sequence[SampleRecord]) -> tuple[Image.Image, Image.Image]:
    """The mosaic image (RGB) and mask ("L") of four records' full-size files. A normal tile's mask is the
    authors' ``Image.fromarray(np.zeros((W, H)))``: zeros of size H x W (transposed; it only matters for
    non-square tiles), pasted like any mask."""
    images = [open_image(record.image_path) for record in records]
    masks = [
        open_mask(r.mask_path) if r.mask_path is not None else Image.new("L", (im.height, im.width))
        for r, im in zip(records, images, strict=True)
    ]
    quarter = images[0].size  # the first image sets the cells, for the image and the mask canvas alike
    return paste_2x2(images, "RGB", quarter), paste_2x2(masks, "L", quarter)


class MosaicTiles:
    """Where one training split's mosaics draw their tiles: per category, the positions of its anomalous
    images with masks, in index order."""

    def __init__(self, records: Sequence[SampleRecord]) -> None:
        self.by_category: dict[str, list[int]] = {}
        for position, record in enumerate(records):
            if record.label == 1 and record.mask_path is not None:
                self.by_category.setdefault(record.category, []).append(position)

    def draw(self, category: str, rng: random.Random) -> list[int] | None:
        """Positions of the four tiles of an item of ``category`` that ``rng`` turned into a mosaic (its
        first draw was below the rate), or None when the category has no anomalous image: the item stays
        as it is."""
        pool = self.by_category.get(category)
        return [rng.choice(pool) for _ in range(4)] if pool else None
