"""Run-wide settings reach every DDP process. That a 2-process evaluation (ddp_spawn) gives exactly the
single-process results, maps, image scores and pictures is checked for every method in
tests/test_every_method.py."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from pipelines import runner
from pipelines.config import compose, to_object


class MatmulPrecisionProbe(L.LightningModule):
    """Writes, from each process, the float32 matmul precision its test step runs with."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.layer = torch.nn.Linear(2, 2)

    def test_step(self, batch, batch_idx) -> None:
        Path(self.out_dir, f"rank{self.global_rank}.txt").write_text(torch.get_float32_matmul_precision())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(4, 2), batch_size=2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_float32_matmul_precision_reaches_every_spawned_process(tmp_path):
    cfg = to_object(compose("demo", ["trainer.float32_matmul_precision=high"]))
    cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy = "cpu", "2", "ddp_spawn"
    cfg.trainer.enable_progress_bar = False
    before = torch.get_float32_matmul_precision()
    try:
        runner.make_trainer(cfg, tmp_path, loggers=[], training=False).test(
            MatmulPrecisionProbe(str(tmp_path))
        )
    finally:
        torch.set_float32_matmul_precision(before)
    assert [Path(tmp_path, f"rank{rank}.txt").read_text() for rank in (0, 1)] == ["high", "high"]
