"""What a transductive method's Lightning module needs (MethodSpec TRANSDUCTIVE: a test population's images
scored against each other, whatever the batch size or number of processes): its own pass over the epoch's
images, handed out population by population as soon as a population is complete (so that the features of
one population are held at a time, not the dataset's), and the gathering of every process's rows. A
population is a category, or the rows of one object together (MVTec LOCO's logical and structural rows:
``DatasetIndex.category_populations``), each image once. MuSc's module (musc/module.py) and AnomalyDINO's
batched zero-shot pass (anomalydino/module.py) use these."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from datamodules.errors import ZsadError


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def own_loader(trainer: Any, method: str) -> Iterable[dict[str, Any]]:
    """This process's share of the epoch's images, in a loader of its own: the same dataset and batch
    sampler (Lightning's DistributedSampler under DDP) as the epoch's loader, whose iterator (persistent
    workers) must be left to the epoch."""
    loader = trainer.predict_dataloaders if trainer.predicting else trainer.test_dataloaders
    if not isinstance(loader, DataLoader):
        raise ZsadError(f"{method} needs one DataLoader per evaluation, got {type(loader).__name__}")
    return DataLoader(
        loader.dataset,
        batch_sampler=loader.batch_sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
    )


def gather_rows(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Each tensor's rows of every process, concatenated in rank order (one process: as they are); the
    processes may hold different numbers of rows. Comes back on the CPU."""
    if not distributed():
        return [t.cpu() for t in tensors]
    from torchmetrics.utilities.distributed import gather_all_tensors

    return [torch.cat(gather_all_tensors(t.to(device))).cpu() for t in tensors]


def first_copies(samples: torch.Tensor) -> list[int]:
    """The positions of each sample id's first occurrence in gathered ``samples``, in order: the rows to keep
    when a ``DistributedSampler`` padded some process with duplicates."""
    first: dict[int, int] = {}
    for position, sample in enumerate(samples.tolist()):
        first.setdefault(sample, position)
    return sorted(first.values())


@dataclasses.dataclass(frozen=True)
class Populations:
    """Who is scored with whom: ``count`` populations, per sample id (a test index position) its population
    and its image file. An image that several categories hold (MVTec LOCO's good test images, in both rows of
    their object) is one image of its population, scored once; each of its samples gets that result."""

    count: int
    of_sample: list[int]
    paths: list[str]

    @classmethod
    def of(cls, datamodule: Any) -> Populations:
        """The datamodule's test populations (``category_populations``)."""
        ids = {c: i for i, c in enumerate(datamodule.categories)}
        of_category = datamodule.category_populations
        records = datamodule.test_index.records
        return cls(
            max(of_category, default=-1) + 1,
            [of_category[ids[r.category]] for r in records],
            [str(r.image_path) for r in records],
        )

    def expected(self, loader: Iterable[Any]) -> list[frozenset[int]] | None:
        """Per population, the samples this process's ``loader`` yields (padding duplicates left out), or
        None when they cannot be known in advance (:func:`~lightning_modules.metrics.distributed.expected_samples`)."""
        from lightning_modules.metrics.distributed import expected_samples

        return expected_samples(loader, self.of_sample, self.count)

    def by_image(self, samples: Sequence[int]) -> tuple[list[int], list[int]]:
        """A population's gathered ``samples`` (padding duplicates dropped) as its images, ordered by path:
        the positions in ``samples`` of each image's first sample, and per position in ``samples`` the index
        of its image among those."""
        order = sorted(range(len(samples)), key=lambda i: (self.paths[samples[i]], samples[i]))
        images: dict[str, int] = {}
        keep: list[int] = []
        for i in order:
            if images.setdefault(self.paths[samples[i]], len(keep)) == len(keep):
                keep.append(i)
        return keep, [images[self.paths[sample]] for sample in samples]


def population_stream(
    loader: Iterable[dict[str, Any]],
    count: int,
    extract: Callable[[dict[str, Any]], Sequence[tuple[int, int, Any]]],
    expected: Sequence[frozenset[int]] | None,
) -> Iterator[tuple[int, list[tuple[int, Any]]]]:
    """``(population id, [(sample id, item), ...])`` of this process for every population id below ``count``
    in ascending order (``extract(batch)`` gives each sample's ``(sample id, population id, item)``), each as
    soon as the loader has given every ``expected`` sample of it and of the populations before it: for a
    loader in category order one population's items are held at a time. Every process yields every
    population in the same order, so per-population gathers stay in step under DDP. ``expected`` None
    (samples not known in advance): all at the end. A sample of a population already handed out (a padding
    duplicate) is dropped: its population's results are complete without it."""
    pending = [set(s) for s in expected] if expected is not None else None
    items: dict[int, list[tuple[int, Any]]] = {}
    done = 0
    for batch in loader:
        for sample, population, item in extract(batch):
            if population < done:
                continue
            items.setdefault(population, []).append((sample, item))
            if pending is not None:
                pending[population].discard(sample)
        while pending is not None and done < count and not pending[done]:
            yield done, items.pop(done, [])
            done += 1
    for population in range(done, count):
        yield population, items.pop(population, [])
