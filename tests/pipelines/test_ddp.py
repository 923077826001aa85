"""Evaluation under DDP (2 CPU processes, ddp_spawn) gives exactly the single-process results, and run-wide
settings reach every process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_cli import FAST, write_experiment
from torch.utils.data import DataLoader

from pipelines import runner
from pipelines.cli import main
from pipelines.config import compose, to_object


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(tmp_path, synthetic_pair):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    assert (
        main(["train", str(experiment), *FAST, "trainer.max_epochs=1", f"run_dir={tmp_path / 'train'}"]) == 0
    )
    checkpoint = tmp_path / "train" / "checkpoints" / "last.ckpt"

    def evaluate(name: str, *overrides: str) -> dict:
        assert (
            main(
                [
                    "test",
                    str(experiment),
                    *FAST,
                    f"checkpoint={checkpoint}",
                    f"run_dir={tmp_path / name}",
                    *overrides,
                ]
            )
            == 0
        )
        return json.loads((tmp_path / name / "results.json").read_text())["targets"]["synthetic"]

    single = evaluate("one", "eval.save_maps=true")
    # 14 test images over 2 ranks with eval batches of 5: the distributed sampler pads, metrics must not count twice
    double = evaluate("two", "trainer.strategy=ddp_spawn", "trainer.devices=2", "eval.save_maps=true")
    # F1-optimal thresholds are scores, which may differ in the last float32 bits (other batch compositions)
    thresholds = [{c: v.pop("f1_thresholds") for c, v in r["categories"].items()} for r in (single, double)]
    assert double["categories"] == single["categories"]
    for category, levels in thresholds[0].items():
        assert levels == pytest.approx(thresholds[1][category], rel=2**-9)  # pixel ones: float16 steps
    assert double["mean"] == single["mean"]
    # each rank wrote its own samples' maps (a padding duplicate twice, atomically): the same 14 files
    one, two = (sorted((tmp_path / name / "maps").rglob("*.npy")) for name in ("one", "two"))
    assert len(one) == 14 and [p.relative_to(tmp_path / "one") for p in one] == [
        p.relative_to(tmp_path / "two") for p in two
    ]
    # equal up to one float16 step (a last-bit float32 difference may round the other way)
    assert all(
        np.allclose(np.load(a), np.load(b), rtol=2**-10, atol=0) for a, b in zip(one, two, strict=True)
    )
    assert not list((tmp_path / "two" / "maps").rglob("*.tmp"))
    # the image scores of both ranks, gathered and written once by rank 0 (padding duplicates dropped); the
    # scores themselves may differ in the last float32 bits (other batch compositions), the ranking does not
    one_rows, two_rows = (
        list(csv.reader((tmp_path / name / "maps" / "synthetic" / "image_scores.csv").open()))
        for name in ("one", "two")
    )
    assert len(one_rows) == 15 and [r[:3] for r in one_rows] == [r[:3] for r in two_rows]
    assert np.allclose([float(r[3]) for r in one_rows[1:]], [float(r[3]) for r in two_rows[1:]], rtol=1e-5)
    # the evaluation pictures: rank 0 drew every category from the gallery heaps of both ranks
    pictures = [
        sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name / "plots").rglob("*.*"))
        for name in ("one", "two")
    ]
    assert pictures[0] == pictures[1] and len(pictures[0]) == 2 * 5
    for category in single["categories"]:
        one_pr, two_pr = (
            [
                r
                for r in csv.DictReader(
                    (tmp_path / name / "plots" / "synthetic" / category / "pr.csv").open()
                )
                if r["level"] == "image"
            ]
            for name in ("one", "two")
        )
        assert np.allclose(
            [float(r["threshold"]) for r in one_pr], [float(r["threshold"]) for r in two_pr], rtol=1e-5
        )


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
