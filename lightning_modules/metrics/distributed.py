"""Per-category evaluation under DDP with bounded memory (used by :class:`~.evaluator.AnomalyEvaluator`).

A process that knows in advance which samples its loader yields (:func:`expected_samples`) can finish the
categories one after another instead of holding the whole test set's pixels until the end of the epoch:
every process finishes the categories in ascending order, each as soon as its own samples of that category
(and of all before it) have arrived, by gathering that one category's states from all processes
(:func:`gather_category`), scoring them identically and freeing them. All processes issue the same
collectives in the same order, so one that is ahead simply waits in the gather for the others. This needs
the test step to issue no other collective per step (zsad's do not: the requeue check of
``pipelines/checkpointing.py`` reads each process's own flag, also while one waits here; callbacks gather
at the end of the epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler
from torchmetrics.utilities.distributed import gather_all_tensors


def loader_sample_ids(loader: object) -> list[int] | None:
    """The dataset indices ``loader`` yields to this process, without the padding duplicates of a
    ``DistributedSampler`` (its trailing indices, which repeat the first ones); None when they cannot be
    known in advance: anything but a ``SequentialSampler`` or an unshuffled, non-dropping
    ``DistributedSampler`` (what Lightning puts into an unshuffled eval loader) in a plain ``BatchSampler``."""
    if not isinstance(loader, DataLoader) or type(loader.batch_sampler) is not BatchSampler:
        return None
    if loader.batch_sampler.drop_last:
        return None
    sampler, n = loader.batch_sampler.sampler, len(loader.dataset)
    if type(sampler) is SequentialSampler:
        return list(range(n))
    if type(sampler) is not DistributedSampler or sampler.shuffle or sampler.drop_last:
        return None
    positions = range(sampler.rank, sampler.total_size, sampler.num_replicas)
    if n == 0 or list(sampler) != [p % n for p in positions]:  # padding repeats the indices from the start
        return None
    return [p for p in positions if p < n]


def expected_samples(
    loader: object, sample_categories: Sequence[int], num_categories: int
) -> list[frozenset[int]] | None:
    """Per category id, the samples (dataset indices) that ``loader`` yields to this process, padding
    duplicates left out (:func:`loader_sample_ids`); ``sample_categories[i]`` is the category id of dataset
    index ``i``. None when the loader's samples cannot be known in advance or its dataset has another length."""
    ids = loader_sample_ids(loader)
    if ids is None or len(loader.dataset) != len(sample_categories):
        return None
    per_category: list[set[int]] = [set() for _ in range(num_categories)]
    for i in ids:
        per_category[sample_categories[i]].add(i)
    return [frozenset(s) for s in per_category]


def gather_category(
    category: int,
    states: dict[str, Tensor],
    device: torch.device,
    group: Any = None,
    while_waiting: Callable[[], None] | None = None,
) -> dict[str, Tensor]:
    """One category's flat states of every process, concatenated in rank order (each state keeps its
    dtype; ``device`` is where the collectives run, e.g. the GPU under NCCL; ``group``: all processes when
    None). Raises the same error on every process when the processes are not finishing the same category
    (they would be out of step).

    A process that is ahead waits here for the others, polling, so that signal handlers run meanwhile;
    ``while_waiting`` is called between polls and may raise to give up (on a requeue signal: the others
    stop at the end of their batch instead of joining)."""
    header = torch.tensor([category], dtype=torch.int64, device=device)
    headers = [torch.zeros_like(header) for _ in range(torch.distributed.get_world_size(group))]
    work = torch.distributed.all_gather(headers, header, group=group, async_op=True)
    delay = 0.0005
    while not work.is_completed():  # the others may still be scoring their batches
        if while_waiting is not None:
            while_waiting()
        time.sleep(delay)
        delay = min(2 * delay, 0.05)
    work.wait()
    ranks_at = [int(h) for h in headers]
    if len(set(ranks_at)) != 1:
        raise RuntimeError(
            f"evaluation processes are out of step: finishing categories {ranks_at} (one per rank); "
            "each process's expected samples do not match what its loader gave it"
        )
    gathered: dict[str, Tensor] = {}
    for name, value in states.items():
        parts = gather_all_tensors(value.to(device), group)
        gathered[name] = torch.cat(parts).to(value.device)
    return gathered
