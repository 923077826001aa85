"""A training DataLoader whose order is a function of (seed, epoch) and that resumes mid-epoch.

Why: a run interrupted mid-epoch and resumed must see the rest of that epoch's batches in the same order
as the uninterrupted run (exact resume, docs/cluster.md). Lightning stores the ``state_dict`` of every
training loader that has one in its checkpoints and hands it back through ``load_state_dict`` before the
resumed epoch's iterator is created.

- :class:`EpochSampler` is ``DistributedSampler``'s permutation (``seed + epoch``, this process's share of
  ``num_replicas``) for any number of processes, one included, so the order never depends on the global RNG
  (which other code draws from), and it can start an epoch after its first ``n`` samples.
- :class:`ResumableDataLoader` counts the batches it has handed out in the current epoch (its state) and
  seeds its own generator from (seed, epoch) at each epoch, so worker seeds are a function of the epoch too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (stable across processes, Python versions and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` order (also for one process) that can skip the first samples of an epoch."""

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, with_epoch: bool = False
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip = 0
        # yield (epoch, index): datasets whose items depend on the epoch (seeded augmentation) learn it per
        # item, which reaches persistent loader workers too
        self.with_epoch = with_epoch

    def skip_next(self, samples: int) -> None:
        """The next iteration starts after this process's first ``samples`` samples of the epoch."""
        self._skip = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self._skip :]
        self._skip = 0
        if self.with_epoch:
            return iter([(self.epoch, i) for i in indices])
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` with Lightning's stateful-loader interface.

    ``state_dict()`` is ``{"epoch", "batches"}`` (batches handed out in that epoch); after
    ``load_state_dict`` the next iteration continues there (an epoch that was complete continues with
    the next one). ``len()`` stays the full epoch's batch count, which Lightning's progress counts against.
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self._batches = 0
        self._resume: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self._resume = (epoch, batches)

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochSampler = self.sampler
        self._batches = 0
        if self._resume is not None:
            (epoch, self._batches), self._resume = self._resume, None
            sampler.set_epoch(epoch)
            sampler.skip_next(self._batches * int(self.batch_size))
        self.generator.manual_seed(derived_seed(sampler.seed, sampler.epoch, "loader"))
        for batch in super().__iter__():
            self._batches += 1
            yield batch
