"""What a transductive method's Lightning module needs (MethodSpec TRANSDUCTIVE: a category's test images
scored against each other, whatever the batch size or number of processes): its own pass over the epoch's
images, handed out category by category as soon as a category is complete (so that the features of one
category are held at a time, not the dataset's), and the gathering of every process's rows. MuSc's module (musc/module.py) and AnomalyDINO's batched
zero-shot pass (anomalydino/module.py) use these."""

from __future__ import annotations

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


def expected_per_category(trainer: Any, loader: Iterable[Any]) -> list[frozenset[int]] | None:
    """Per category id, the samples this process's ``loader`` yields (padding duplicates left out), or None
    when they cannot be known in advance (:func:`~lightning_modules.metrics.distributed.expected_samples`)."""
    from lightning_modules.metrics.distributed import expected_samples

    datamodule = trainer.datamodule
    ids = {c: i for i, c in enumerate(datamodule.categories)}
    records = datamodule.test_index.records
    return expected_samples(loader, [ids[r.category] for r in records], len(ids))


def category_stream(
    loader: Iterable[dict[str, Any]],
    n_categories: int,
    extract: Callable[[dict[str, Any]], Sequence[tuple[int, int, Any]]],
    expected: Sequence[frozenset[int]] | None,
) -> Iterator[tuple[int, list[tuple[int, Any]]]]:
    """``(category id, [(sample id, item), ...])`` of this process for every category id in ascending order
    (``extract(batch)`` gives each sample's ``(sample id, category id, item)``), each as soon as the loader
    has given every ``expected`` sample of it and of the categories before it: for a loader in category order
    one category's items are held at a time. Every process yields every category in the same order, so
    per-category gathers stay in step under DDP. ``expected`` None (samples not known in advance): all at the
    end. A sample of a category already handed out (a padding duplicate) is dropped: its category's results
    are complete without it."""
    pending = [set(s) for s in expected] if expected is not None else None
    items: dict[int, list[tuple[int, Any]]] = {}
    done = 0
    for batch in loader:
        for sample, category, item in extract(batch):
            if category < done:
                continue
            items.setdefault(category, []).append((sample, item))
            if pending is not None:
                pending[category].discard(sample)
        while pending is not None and done < n_categories and not pending[done]:
            yield done, items.pop(done, [])
            done += 1
    for category in range(done, n_categories):
        yield category, items.pop(category, [])
