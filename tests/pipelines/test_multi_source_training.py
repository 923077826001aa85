"""Training on two source datasets at once (AnomalyCLIP tiny, its feature cache on): the run records its
sources, an interrupted run resumes to the bit-identical result, and a resume onto changed data is refused."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from test_cli import FAST
from test_resume import _assert_same_training

from pipelines.cli import main
from tests_support import SendAt, interrupt_training_at


def _two_source_experiment(tmp_path: Path, synthetic_pair, shared_category_source) -> Path:
    source, target = synthetic_pair
    second = tmp_path / "data" / "industrial2"
    shutil.copytree(shared_category_source, second)  # this test changes a file of it
    data = tmp_path / "data"
    for name, root in (("a", source), ("b", second), ("t", target)):
        (data / f"{name}.yaml").write_text(
            f"name: synthetic\nroot: {root}\nbatch_size: 4\neval_batch_size: 5\nnum_workers: 0\n"
        )
    experiment = tmp_path / "two_sources.yaml"
    experiment.write_text(
        "defaults:\n  method: anomalyclip_tiny\n"
        f"  source: [{data / 'a.yaml'}, {data / 'b.yaml'}]\n  targets: [{data / 't.yaml'}]\n"
        f"name: two\noutput_dir: {tmp_path / 'runs'}\ntrainer: {{accelerator: cpu, devices: '1'}}\n"
    )
    return experiment


@pytest.mark.slow
def test_two_sources_train_as_one_set_record_it_and_resume_exactly(
    tmp_path, synthetic_pair, shared_category_source, monkeypatch
):
    """With gradients accumulated over 2 batches too: a stop asked for between the two batches of one
    optimizer step waits for it (the summed gradients are in no checkpoint)."""
    experiment = _two_source_experiment(tmp_path, synthetic_pair, shared_category_source)
    # 26 images in batches of 4: 7 batches, 4 optimizer steps per epoch
    args = [*FAST, "trainer.max_epochs=2", "trainer.accumulate_grad_batches=2"]
    reference, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    assert main(["run", str(experiment), *args, f"run_dir={reference}"]) == 0
    results = json.loads((reference / "results.json").read_text())
    assert results["source"] == "synthetic+synthetic"
    assert [(s["root"], s["split"]) for s in results["sources"]] == [
        (str(synthetic_pair[0]), "test"),
        (str(tmp_path / "data" / "industrial2"), "test"),
    ]
    assert results["source_data"]["n_files"] == 26 + 16  # both sources' images and masks

    run = ["run", str(experiment), *args, f"run_dir={run_dir}"]
    interrupt_training_at(
        monkeypatch, SendAt(0, 2, signal.SIGTERM)
    )  # mid-epoch, between two accumulated batches
    assert main(run) == 128 + signal.SIGTERM
    assert [p.name for p in (run_dir / "checkpoints" / "resume").iterdir()] == ["step-000000002.ckpt"]
    interrupt_training_at(monkeypatch, None)
    assert main(run) == 0
    _assert_same_training(run_dir, reference)

    # the same config on changed data: the resume checkpoint's training data no longer matches
    changed = tmp_path / "changed"
    interrupt_training_at(monkeypatch, SendAt(0, 3, signal.SIGTERM))
    assert main(["train", str(experiment), *args, f"run_dir={changed}"]) == 128 + signal.SIGTERM
    extra = tmp_path / "data" / "industrial2" / "grain" / "test" / "good"
    shutil.copy(extra / "000.png", extra / "009.png")
    interrupt_training_at(monkeypatch, None)
    assert main(["train", str(experiment), *args, f"run_dir={changed}"]) == 2  # a user error
    assert "trained on other data" in json.loads((changed / "status.json").read_text())["error"]
