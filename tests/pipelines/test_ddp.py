"""Evaluation under DDP (2 CPU processes, ddp_spawn) gives exactly the single-process results."""

from __future__ import annotations

import json

import pytest
from test_cli import FAST, write_experiment

from pipelines.cli import main


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

    single = evaluate("one")
    # 14 test images over 2 ranks with eval batches of 5: the distributed sampler pads, metrics must not count twice
    double = evaluate("two", "trainer.strategy=ddp_spawn", "trainer.devices=2")
    assert double["categories"] == single["categories"]
    assert double["mean"] == single["mean"]
