"""Extra inputs a method draws for each training item, read in the loader's worker processes.

AdaptCLIP's training feeds each sample K normal "prompt" images of its category beside it (their dataset's
``__getitem__`` draws them, in their DataLoader's workers). Reading those files in the training step would
decode them one after the other on the process that drives the GPU; a method instead hands the datamodule a
:data:`ItemExtras` (``set_train_item_extras``), and :class:`WithItemExtras` adds its tensors to each item
where the item is made: in the workers, beside the image or the cached features.

The extras are a function of (epoch, sample, category) only, as the datamodule's sampler asks for
``(epoch, index)``: the same items whatever the number of workers or processes, and after a resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

#: (epoch, sample id, category id) -> tensors to add to the item; picklable (it runs in the workers)
ItemExtras = Callable[[int, int, int], dict[str, torch.Tensor]]


class WithItemExtras(Dataset):
    """``base``'s items (images or cached features), each with ``extras(epoch, sample_id, category_id)``."""

    takes_epoch = True  # datamodules.datamodule.resumable_train_loader asks for (epoch, index)

    def __init__(self, base: Dataset, extras: ItemExtras) -> None:
        self.base = base
        self.extras = extras

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        item = self.base[(epoch, i)] if getattr(self.base, "takes_epoch", False) else self.base[i]
        added = self.extras(epoch, int(item["sample_id"]), int(item["category_id"]))
        clash = sorted(set(added) & set(item))
        if clash:
            raise KeyError(f"training item extras would replace the item's own {clash}")
        return {**item, **added}
