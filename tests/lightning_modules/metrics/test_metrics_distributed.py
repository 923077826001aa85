"""Which samples a process's eval loader yields, known before the epoch (what lets DDP evaluation finish
the categories one by one); the two-process runs are in test_metrics_ddp.py."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from lightning_modules.metrics import AnomalyEvaluator
from lightning_modules.metrics.distributed import expected_samples, gather_category, loader_sample_ids


def distributed_loader(n: int, world: int, rank: int, **options) -> DataLoader:
    data = torch.arange(n)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False, **options)
    return DataLoader(data, sampler=sampler, batch_size=2)


@pytest.mark.parametrize(("n", "world"), [(7, 2), (8, 2), (5, 4), (2, 3), (10, 3)])
def test_each_sample_is_expected_on_exactly_one_process_and_arrives_there(n, world):
    shares = [loader_sample_ids(distributed_loader(n, world, rank)) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(n))  # padding duplicates left out
    for rank, share in enumerate(shares):
        received = [int(i) for batch in distributed_loader(n, world, rank) for i in batch]
        assert set(share) <= set(received) and len(received) == -(-n // world)


def test_samples_of_loaders_whose_order_is_not_known_in_advance_are_unknown():
    data = torch.arange(6)
    assert loader_sample_ids(DataLoader(data, batch_size=4)) == list(range(6))  # one process
    assert loader_sample_ids(DataLoader(data, batch_size=4, shuffle=True)) is None
    assert loader_sample_ids(distributed_loader(6, 2, 0, drop_last=True)) is None
    shuffled = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True)
    assert loader_sample_ids(DataLoader(data, sampler=shuffled)) is None
    assert loader_sample_ids(DataLoader(data, batch_size=4, drop_last=True)) is None

    class Reversed(Sampler):
        def __iter__(self):
            return iter(range(5, -1, -1))

        def __len__(self) -> int:
            return 6

    assert loader_sample_ids(DataLoader(data, sampler=Reversed())) is None
    assert loader_sample_ids(list(data)) is None


def test_expected_samples_are_grouped_by_category():
    categories = [0, 0, 0, 1, 2, 2, 2]
    own = expected_samples(distributed_loader(7, 2, 1), categories, 4)
    assert own == [frozenset({1}), frozenset({3}), frozenset({5}), frozenset()]
    assert expected_samples(distributed_loader(7, 2, 1), categories[:-1], 4) is None  # another dataset


def test_expected_samples_need_the_category_sizes():
    with pytest.raises(ValueError, match="needs samples_per_category"):
        AnomalyEvaluator(["a", "b"], expected_samples=[{0}, {1}])
    with pytest.raises(ValueError, match="one set of sample ids per category"):
        AnomalyEvaluator(["a", "b"], samples_per_category=[1, 1], expected_samples=[{0}])


def _ahead_process_gives_up_waiting(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    gave_up = Path(folder, "gave_up")
    cpu = torch.device("cpu")
    if rank == 0:
        polls: list[int] = []

        def stop_after_three_polls() -> None:
            polls.append(1)
            if len(polls) == 3:
                raise InterruptedError("requeue signal")

        with pytest.raises(InterruptedError):
            gather_category(1, {"x": torch.arange(2)}, cpu, while_waiting=stop_after_three_polls)
        gave_up.write_text("after 3 polls")
    else:  # behind: joins that category only once the other process gave up
        deadline = time.monotonic() + 60
        while not gave_up.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gave_up.exists()
        dist.all_gather([torch.zeros(1, dtype=torch.int64)] * 2, torch.tensor([1]))  # the pending header
    # the next category: uneven shares, kept dtypes, rank order
    states = {"x": torch.arange(3 + rank, dtype=torch.float16), "n": torch.full((rank,), 7)}
    got = gather_category(2, states, cpu)
    assert got["x"].tolist() == [0, 1, 2, 0, 1, 2, 3] and got["x"].dtype == torch.float16
    assert got["n"].tolist() == [7]
    dist.destroy_process_group()


def test_a_process_waiting_for_the_others_can_give_up_and_gathers_keep_rank_order(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_ahead_process_gives_up_waiting, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "gave_up").read_text() == "after 3 polls"
