"""The prompt images of AdaptCLIP's training samples (their train.py feeds ``items['prompt_img']``, ``k_shots``
normal images per sample, to the prompt-query adapter).

Their ``dataset/dataset.py`` (``Dataset.__getitem__`` in train mode) takes one image per item with
``random.choice(meta_train_info[cls_name])``: the category's normal training images (MVTec AD's
``train/good``); zsad's ``normal_train`` (default) draws from the same pool. ``training_split`` (a
deviation) takes the normal images of the training set itself (the few-shot draw under ``source.train_shots``),
the sample excluded. Each sample's draw depends on (seed, epoch, sample) only, so a resumed or multi-process
training sees the same prompts. The module hands a :class:`TrainingPrompts` to the datamodule
(``set_train_item_extras``): the loader's workers read each item's prompt images beside it (``prompt_images``),
as their DataLoader does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.errors import ConfigError
from datamodules.images import open_image
from datamodules.references import normal_training_records
from datamodules.transforms import ImageMaskTransform


class TrainingPrompts:
    def __init__(self, datamodule: Any, source: str, shots: int) -> None:
        if not hasattr(datamodule, "transform_spec"):
            raise ConfigError(
                "adaptclip draws its training prompt images from one source dataset (not several)"
            )
        self.seed = int(datamodule.seed)
        self.shots = shots
        self.transform = ImageMaskTransform(datamodule.transform_spec(train=False))
        self.categories = list(datamodule.categories)
        # the training set as the loader indexes it (sample_id): the few-shot draw under source.train_shots
        train_split = datamodule.train_index.records
        self.train_paths = [r.image_path for r in train_split]
        if source == "normal_train":
            self.pools = {
                c: [r.image_path for r in rs]
                for c, rs in normal_training_records(datamodule.full_index).items()
            }
        else:
            self.pools = {}
            for record in train_split:
                if record.label == 0:
                    self.pools.setdefault(record.category, []).append(record.image_path)
        self.source = source
        for category in self.categories:
            usable = len(self.pools.get(category, [])) - (source == "training_split")
            if usable < shots:
                raise ConfigError(
                    f"adaptclip: category '{category}' of the source has {max(usable, 0)} normal images for "
                    f"train_prompts={source}, fewer than train_prompt_images={shots}"
                )

    def paths(self, epoch: int, sample_id: int, category_id: int) -> list[Any]:
        pool = self.pools[self.categories[category_id]]
        if self.source == "training_split":
            pool = [p for p in pool if p != self.train_paths[sample_id]]
        order = np.random.default_rng([self.seed % 2**64, int(epoch), int(sample_id)]).permutation(len(pool))
        return [pool[i] for i in order[: self.shots].tolist()]

    def sample_images(self, epoch: int, sample_id: int, category_id: int) -> torch.Tensor:
        """``[S, 3, H, W]``: one sample's prompt images, preprocessed like the test images."""
        return torch.stack(
            [self.transform.image(open_image(p)) for p in self.paths(epoch, sample_id, category_id)]
        )

    def __call__(self, epoch: int, sample_id: int, category_id: int) -> dict[str, torch.Tensor]:
        """The item extras of one training sample (datamodules/item_extras.py)."""
        return {"prompt_images": self.sample_images(epoch, sample_id, category_id)}

    def images(self, epoch: int, sample_ids: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """``[B, S, 3, H, W]``: the prompt images of a batch, preprocessed like the test images."""
        return torch.stack(
            [
                self.sample_images(epoch, s, c)
                for s, c in zip(sample_ids.tolist(), category_ids.tolist(), strict=True)
            ]
        )
