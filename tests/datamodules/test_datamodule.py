"""AnomalyDataModule's loader settings (how many workers load data when ``data.num_workers`` is unset), and
what its test batches give the evaluator through a method's test loop (sample groups, regions)."""

from __future__ import annotations

import pytest
import torch

from datamodules import datamodule as datamodule_module
from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule, auto_num_workers, usable_cores
from lightning_modules.base import ZeroShotModule
from tests_support import quiet_trainer


@pytest.fixture
def cores(monkeypatch):
    """Pretend this process may run on ``n`` cores, outside SLURM."""
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)

    def set_cores(n: int) -> None:
        monkeypatch.setattr(
            datamodule_module.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False
        )

    return set_cores


@pytest.mark.parametrize(
    ("n_cores", "processes", "workers"),
    [
        (16, 1, 8),  # capped: more workers than this only add start-up time and memory
        (16, 2, 7),  # 8 cores per process, one kept for the process itself
        (16, 4, 3),
        (2, 1, 1),  # the CI machine
        (1, 1, 0),  # loads in the main process
        (4, 8, 0),  # more processes than cores
    ],
)
def test_auto_workers_share_the_usable_cores_among_the_node_processes(cores, n_cores, processes, workers):
    cores(n_cores)
    assert auto_num_workers(processes) == workers


def test_slurm_cpus_per_task_are_this_process_own(cores, monkeypatch):
    cores(64)  # the node; SLURM gave this task 6 of them
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert usable_cores(local_processes=4) == 6 and auto_num_workers(4) == 5


def test_loaders_use_the_setting_or_the_automatic_count(cores, synthetic_pair):
    source, _ = synthetic_pair
    cores(6)

    def loader_workers(num_workers):
        cfg = DataConfig(name="synthetic", root=str(source), num_workers=num_workers)
        datamodule = AnomalyDataModule(cfg, image_size=32)
        loaders = (datamodule.test_dataloader(), datamodule.train_dataloader())
        return [(loader.num_workers, loader.persistent_workers) for loader in loaders]

    assert loader_workers(None) == [(5, True), (5, True)]
    assert loader_workers(0) == [(0, False), (0, False)]
    assert loader_workers(3) == [(3, True), (3, True)]


class _MaskOracle(ZeroShotModule):
    """Scores each image by its ground truth: maps are the masks (plus a little noise), scores their maxima."""

    def predict_batch(self, batch):
        maps = batch["mask"] + 0.01 * torch.rand(
            batch["mask"].shape, generator=torch.Generator().manual_seed(0)
        )
        return maps.amax((1, 2)), maps


@pytest.mark.parametrize(
    ("name", "fixture"), [("realiad", "fake_realiad"), ("mvtec_loco", "fake_mvtec_loco")]
)
def test_test_loop_gives_the_evaluator_sample_groups_and_regions(name, fixture, request):
    """Real-IAD's views grouped into samples give the sample-level columns, MVTec LOCO's region folders sPRO;
    a perfect map scores 1 on both, and the other datasets' columns are unchanged."""
    cfg = DataConfig(name=name, root=str(request.getfixturevalue(fixture)), num_workers=0, eval_batch_size=7)
    module = _MaskOracle()
    quiet_trainer().test(module, datamodule=AnomalyDataModule(cfg, image_size=32))
    result = module.test_results
    extra = ["sample_auroc", "sample_ap", "sample_f1_max"] if name == "realiad" else ["spro"]
    assert result.extra_metrics == extra
    for metric in extra:
        assert result.mean[metric] == pytest.approx(1.0) and result.mean_counts[metric] == len(
            result.categories
        )
