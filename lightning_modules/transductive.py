"""What a transductive method's Lightning module needs (MethodSpec TRANSDUCTIVE: a category's test images
scored against each other, whatever the batch size or number of processes): its own pass over the epoch's
images and the gathering of every process's rows. MuSc's module (musc/module.py) and AnomalyDINO's batched
zero-shot pass (anomalydino/module.py) use these."""

from __future__ import annotations

from collections.abc import Iterable
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
