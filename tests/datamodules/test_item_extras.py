"""Training items with a method's extras (datamodules/item_extras.py): asked for per (epoch, index), over
plain, epoch-dependent and cached-feature datasets, never replacing the item's own keys."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from datamodules.item_extras import WithItemExtras


class Items(Dataset):
    """Items as the datasets give them (sample and category ids), optionally asked for with the epoch."""

    def __init__(self, takes_epoch: bool) -> None:
        self.takes_epoch = takes_epoch
        self.asked: list = []

    def __len__(self) -> int:
        return 3

    def __getitem__(self, key):
        self.asked.append(key)
        i = key[1] if isinstance(key, tuple) else key
        return {"sample_id": torch.tensor(i), "category_id": torch.tensor(i % 2), "x": torch.tensor(float(i))}


def extras(epoch: int, sample: int, category: int) -> dict[str, torch.Tensor]:
    return {"extra": torch.tensor([epoch, sample, category])}


@pytest.mark.parametrize("takes_epoch", [False, True])
def test_each_item_gets_the_extras_of_its_epoch_sample_and_category(takes_epoch):
    base = Items(takes_epoch)
    dataset = WithItemExtras(base, extras)
    assert dataset.takes_epoch and len(dataset) == 3
    item = dataset[(4, 1)]
    assert item["extra"].tolist() == [4, 1, 1] and float(item["x"]) == 1.0
    assert dataset[2]["extra"].tolist() == [0, 2, 0]  # a bare index is epoch 0
    # an epoch-dependent base (a seeded augmentation) still learns the epoch
    assert base.asked == ([(4, 1), (0, 2)] if takes_epoch else [1, 2])


def test_extras_never_replace_the_items_own_keys():
    dataset = WithItemExtras(Items(False), lambda e, s, c: {"x": torch.tensor(0.0)})
    with pytest.raises(KeyError, match=r"replace the item's own \['x'\]"):
        dataset[0]
