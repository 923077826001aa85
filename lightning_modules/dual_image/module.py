"""Dual-Image Enhanced CLIP evaluation in Lightning (training-free, TTA in the test loop).

Partners across processes. Under DDP each process sees only a shard of the test set, but an image's
partners must come from its *whole* category (MVTec LOCO's two rows of an object: the object's test images,
each once). Each process therefore builds the reference bank of a category itself, from ``datamodule.test_index`` (every record of the test split, in index order): it loads
and encodes all of the category's images once per test epoch, the first time a batch of that category
arrives, and keeps the banks of the two most recent categories. Banks are identical on every process
(same images, same order, same seeded pairing), so an image's partners and score do not depend on how
the test set is split; the batch's own visual tokens are read from the bank too. The price is that each
process encodes every image of the categories it sees (at most ``world_size`` times the minimum work, and
without communication). Gathering features from all ranks with ``all_gather`` would avoid the duplicate
encoding but needs every rank to reach the same category at the same step, which sharding does not
guarantee.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from datamodules.progress import progress
from lightning_modules.anovl.module import AnoVLModule, image_seed
from lightning_modules.dual_image.config import DualImageConfig
from lightning_modules.dual_image.model import DualImageCLIP
from lightning_modules.dual_image.reference import pair_partners
from lightning_modules.eval_config import EvalConfig

PAIRING_SALT = 2
_BANKS_KEPT = 2  # categories whose banks stay in memory (a shard's padding revisits the first one)


@dataclasses.dataclass
class ReferenceBank:
    """Reference features of every test image of one category (or test population: MVTec LOCO's rows of an
    object together, each image once), in index order."""

    rows: dict[int, int]  # sample_id (position in the test index) -> row
    class_embedding: torch.Tensor  # [n, D]
    tokens: dict[int, torch.Tensor]  # layer -> [n, N, C] L2-normalised
    partners: torch.Tensor  # [n, k] rows of each image's partners


class DualImageModule(AnoVLModule):
    method_name = "dual_image"
    model_class = DualImageCLIP
    cfg: DualImageConfig
    model: DualImageCLIP

    def __init__(
        self, cfg: DualImageConfig, eval_cfg: EvalConfig | None = None, model: DualImageCLIP | None = None
    ) -> None:
        super().__init__(cfg, eval_cfg, model)
        self._dataset = None
        self._loader_options: dict[str, Any] = {}
        self._banks: collections.OrderedDict[str, ReferenceBank] = collections.OrderedDict()

    def bind_data(self, datamodule: Any) -> None:
        super().bind_data(datamodule)
        self._dataset = (
            datamodule.test_dataloader().dataset
        )  # the same items, ids and transforms as the test loop
        cfg = datamodule.cfg
        self._loader_options = {"batch_size": cfg.eval_batch_size, "num_workers": datamodule.num_workers}
        self._banks.clear()

    def category_bank(self, category: str) -> ReferenceBank:
        """The bank of the category's test population (built on first use; see the module docstring for why
        every process does it): its images, each once (MVTec LOCO's good images are in both rows)."""
        # its test population: the categories of its folder (MVTec LOCO's rows of one object together, as the
        # object's folder; every other category alone), named by the folder (AnoVL's bind_data)
        population = self._folders.get(category, category)
        if population in self._banks:
            self._banks.move_to_end(population)
            return self._banks[population]
        members = {c for c, folder in self._folders.items() if folder == population} | {category}
        positions, rows, first = [], {}, {}
        for i, record in enumerate(self._dataset.records):
            if record.category in members:
                if record.image_path not in first:
                    first[record.image_path] = len(positions)
                    positions.append(i)
                rows[i] = first[record.image_path]
        embeddings, tokens = [], collections.defaultdict(list)
        dtype = getattr(torch, self.cfg.visual.bank_dtype)
        loader = DataLoader(Subset(self._dataset, positions), shuffle=False, **self._loader_options)
        for batch in progress(loader, f"reference bank {category}", unit="batch"):
            class_embedding, layer_tokens = self.model.encode_reference(batch["image"].to(self.device))
            embeddings.append(class_embedding)
            for layer, value in layer_tokens.items():
                tokens[layer].append(value.to(dtype))
        class_embedding = torch.cat(embeddings)
        generator = torch.Generator().manual_seed(image_seed(self.seed, population, PAIRING_SALT))
        partners = pair_partners(class_embedding, self.cfg.visual.pairing, self.cfg.visual.k, generator)
        bank = ReferenceBank(
            rows=rows,
            class_embedding=class_embedding,
            tokens={layer: torch.cat(values) for layer, values in tokens.items()},
            partners=partners,
        )
        self._banks[population] = bank
        while len(self._banks) > _BANKS_KEPT:
            self._banks.popitem(last=False)
        return bank

    def reference_grid(self, batch: dict[str, Any], categories: list[str]) -> torch.Tensor | None:
        """``[B, h, w]`` visual map of the batch (zeros for an image alone in its category), or None if off."""
        if not self.cfg.visual.enabled:
            return None
        grid = (self.model.vision.grid, self.model.vision.grid)
        out = torch.zeros(len(categories), *grid, device=self.device)
        sample_ids = batch["sample_id"].tolist()
        for category in dict.fromkeys(categories):
            members = [i for i, c in enumerate(categories) if c == category]
            bank = self.category_bank(category)
            if bank.partners.shape[1] == 0:
                continue
            rows = torch.tensor([bank.rows[sample_ids[i]] for i in members])
            queries = {layer: tokens[rows] for layer, tokens in bank.tokens.items()}
            out[members] = self.model.reference_grid(queries, bank.tokens, bank.partners[rows], grid).to(out)
        return out

    def extra_inputs(self, batch: dict[str, Any], categories: list[str]) -> dict[str, Any]:
        return {"reference_grid": self.reference_grid(batch, categories)}
