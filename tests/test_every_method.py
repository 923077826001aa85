"""Every registered method, end to end through ``zsad`` on its tiny config, checked the same way: its run
writes complete results, a training that a stop signal interrupts resumes to bit-identical weights and
results, the checkpoint reloads to the same results, ``zsad predict`` writes a map per image, and a
2-process evaluation gives exactly the single-process results (or is refused with the one-line reason the
method's spec declares). A new method gets all of it by registering a ``MethodSpec`` with a ``tiny_config``.

The uninterrupted run is the reference of every check, so a trained method trains twice (2 epochs of 4
steps) and evaluates the 14 target images four times, a training-free one three times (drawing the
evaluation pictures only in the two evaluations whose pictures are compared). A
matrix product's last float32 bits may depend on how many images share it and on the number of threads,
which would make comparing one process with two approximate: evaluation batches hold one image, and every
process, the spawned ones too, computes on one thread; that makes it exact.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
from baselines_support import write_method_experiment
from omegaconf import OmegaConf

from datamodules.fingerprint import index_fingerprint
from datamodules.index import build_index
from lightning_modules.method_spec import MethodSpec
from lightning_modules.registry import get_method, method_names
from pipelines import runner
from pipelines.cli import main
from pipelines.config import compose, find_config, to_object
from pipelines.protocol import shots_label
from tests_support import SendAt, interrupt_training_at

pytestmark = pytest.mark.slow

COMMON = ["logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", "targets.0.eval_batch_size=1"]
UNCOMPARED = ["eval.visualize=false"]  # the runs whose pictures are not compared: they need none
EPOCHS = ["trainer.max_epochs=2"]  # 14 source images in batches of 4: 4 steps per epoch
DDP = ["trainer.strategy=ddp_spawn", "trainer.devices=2"]
CATEGORIES = {"ring", "cells"}  # of the synthetic target: 3 normal and 4 anomalous test images each


@dataclasses.dataclass
class MethodRuns:
    """What every check of one method starts from: its uninterrupted run and a reload of its weights."""

    spec: MethodSpec
    experiment: Path
    reference: Path  # `zsad run`: trained (trained methods), then evaluated on the synthetic target
    evaluation: Path  # `zsad test` of the reference's checkpoint, with its maps saved (one process)
    source: Path  # the synthetic datasets' roots (trained methods train on the source's test split)
    target: Path
    module: Any = None  # the module the reference run built, trained
    before: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # ...its state before that

    @property
    def checkpoint(self) -> list[str]:
        return [f"checkpoint={self.reference / 'checkpoints' / 'last.ckpt'}"] if self.spec.trains else []

    @property
    def zero_shot(self) -> bool:
        """Whether the method evaluates without references (zero-shot or transductive); one that has no such
        mode (AnomalyDINO) runs every check 1-shot, its outputs in the run's ``draws/0``."""
        return self.spec.runs_without_references

    def outputs(self, run_dir: Path) -> Path:
        return run_dir if self.zero_shot else run_dir / "draws" / "0"

    def args(self, job: str, run_dir: Path, *overrides: str) -> list[str]:
        epochs = EPOCHS if self.spec.trains else []
        protocol = [] if self.zero_shot else ["protocol.shots=1"]
        return [job, str(self.experiment), *COMMON, *epochs, *protocol, *overrides, f"run_dir={run_dir}"]


def _targets(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())["targets"]


def _trained(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _test_split_digest(root: Path) -> str:
    """The fingerprint digest of a dataset's test split (small sets: every file's contents hashed)."""
    return index_fingerprint(build_index("synthetic", root).select(split="test"))["digest"]


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", method_names())
def test_every_method_has_a_tiny_config(name):
    spec = get_method(name)
    assert spec.tiny_config, f"method '{name}' registers no tiny_config (configs/method/<name>_tiny.yaml)"
    assert OmegaConf.load(find_config("method", spec.tiny_config)).name == name
    method = to_object(compose("demo", [f"method={spec.tiny_config}"])).method
    assert method.backbone.pretrained is None  # random weights: nothing to download


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here and in the processes ``ddp_spawn`` starts (Lightning leaves a set
    OMP_NUM_THREADS alone); tiny models gain nothing from more on a shared CPU anyway."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


BUILD_MODULE = runner.build_module  # the real one


@pytest.fixture(scope="module", params=method_names())
def runs(request, tmp_path_factory, synthetic_pair) -> MethodRuns:
    spec = get_method(request.param)
    tmp_path = tmp_path_factory.mktemp(spec.name)
    source, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, spec.tiny_config, source if spec.trains else None, target)
    built: list[tuple[Any, dict[str, torch.Tensor]]] = []

    def build_module(cfg, spec):
        module = BUILD_MODULE(cfg, spec)
        built.append((module, {k: v.clone() for k, v in module.state_dict().items()}))
        return module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "build_module", build_module)
        runs = MethodRuns(spec, experiment, tmp_path / "reference", tmp_path / "evaluation", source, target)
        assert main(runs.args("run", runs.reference, *UNCOMPARED)) == 0
    runs.module, runs.before = built[0]
    assert main(runs.args("test", runs.evaluation, *runs.checkpoint, "eval.save_maps=true")) == 0
    return runs


def test_a_run_writes_complete_results_and_trains_only_what_it_saves(runs):
    results = _targets(runs.reference)["synthetic"]
    assert set(results["categories"]) == CATEGORIES
    for metrics in results["categories"].values():
        assert (metrics["n_normal"], metrics["n_anomalous"]) == (3, 4)
        for key in ("image_auroc", "image_ap", "pixel_auroc", "aupro"):
            assert 0.0 <= metrics[key] <= 1.0, key
    for key, mean in results["mean"].items():
        assert mean == pytest.approx(np.mean([m[key] for m in results["categories"].values()])), key
    # what the run recorded about its inputs is what the method's spec says and the images it saw
    cfg = to_object(compose(runs.experiment, runs.args("run", runs.reference)[2:])).method
    assert results["image_size"] == runs.spec.image_size(cfg)
    assert results["preprocessing"] == dataclasses.asdict(runs.spec.preprocessing(cfg, "synthetic"))
    fingerprint = results["data_fingerprint"]
    assert fingerprint["digest"] == _test_split_digest(runs.target) and fingerprint["n_files"] == 14 + 8
    trained_on = json.loads((runs.reference / "results.json").read_text())["source_data"]
    assert (trained_on or {}).get("digest") == (_test_split_digest(runs.source) if runs.spec.trains else None)
    rows = {row["category"]: row for row in csv.DictReader((runs.reference / "results.csv").open())}
    assert set(rows) == {*CATEGORIES, "mean"}
    assert float(rows["mean"]["image_auroc"]) == pytest.approx(results["mean"]["image_auroc"])
    assert (runs.reference / "config.yaml").is_file()
    assert (runs.reference / "checkpoints").is_dir() == runs.spec.trains  # training-free: no checkpoint

    module = runs.module
    after = module.state_dict()
    changed = {key for key, value in runs.before.items() if not torch.equal(after[key], value)}
    if not runs.spec.trains:
        assert not changed, f"a training-free method changed its weights: {sorted(changed)}"
        return
    # the checkpoint holds exactly the trainable parameters, which training changed, and nothing else did
    trainable = module.trainable_state_keys()
    assert set(_trained(runs.reference)) == trainable
    assert changed and changed <= trainable, f"changed beyond the trainable parameters: {changed - trainable}"


def test_the_reloaded_checkpoint_gives_the_runs_results(runs):
    """`zsad test checkpoint=` evaluates the weights the run ended with, exactly as the run did, and records
    how they were trained (the checkpoint carries the run's method, source and trainer settings)."""
    assert _targets(runs.evaluation) == _targets(runs.reference)
    trained = json.loads((runs.evaluation / "results.json").read_text())["trained_setting"]
    if not runs.spec.trains:
        assert trained is None
        return
    config = yaml.safe_load((runs.reference / "config.yaml").read_text())
    assert trained == {key: config[key] for key in ("method", "source", "trainer")}


def test_a_training_stopped_by_a_signal_resumes_to_identical_weights_and_results(runs, tmp_path, monkeypatch):
    if not runs.spec.trains:
        pytest.skip(f"{runs.spec.name} is training-free")
    run_dir = tmp_path / "interrupted"
    args = runs.args("run", run_dir, *UNCOMPARED)
    interrupt_training_at(monkeypatch, SendAt(0, 1, signal.SIGTERM))  # a real SIGTERM, mid-epoch 0
    assert main(args) == 128 + signal.SIGTERM
    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    interrupt_training_at(monkeypatch, None)
    assert main(args) == 0  # the same command resumes

    trained, reference = _trained(run_dir), _trained(runs.reference)
    assert trained.keys() == reference.keys()
    different = [key for key in reference if not torch.equal(trained[key], reference[key])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different}"
    assert _targets(run_dir) == _targets(runs.reference)


def test_predict_writes_a_map_per_image_at_its_size(runs, tmp_path, capsys):
    folder, out = runs.target / "ring" / "test", tmp_path / "predicted"
    images = sorted(p.relative_to(folder) for p in folder.rglob("*.png"))
    args = ["predict", str(runs.experiment), *COMMON, *runs.checkpoint, "--object", "ring"]
    if not runs.zero_shot:  # without references refused in one line, nothing written; with them it runs
        capsys.readouterr()
        assert main([*args, "--out", str(out), "--input", str(folder)]) == 2 and not out.exists()
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and "--references DIR" in error, error
        args += ["--references", str(runs.target / "ring" / "train" / "good")]
    assert main([*args, "--out", str(out), "--input", str(folder)]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(Path(row["path"]).relative_to(folder) for row in rows) == images and len(images) == 7
    assert all(np.isfinite(float(row["score"])) for row in rows)
    for image in images:
        anomaly_map = tifffile.imread(out / "maps" / image.with_suffix(".tiff"))
        assert anomaly_map.shape == (32, 32) and anomaly_map.dtype == np.float32  # the image's size
        assert np.isfinite(anomaly_map).all()
        assert (out / "overlays" / image).is_file()


def test_a_two_process_evaluation_equals_one_process_or_is_refused(runs, tmp_path, capsys):
    run_dir = tmp_path / "ddp"
    args = runs.args("test", run_dir, *runs.checkpoint, "eval.save_maps=true", *DDP)
    refusal = runs.spec.ddp_refusal and runs.spec.ddp_refusal(to_object(compose(args[1], args[2:])).method)
    capsys.readouterr()
    code = main(args)
    if refusal:  # in one line, before any process is spawned; `zsad predict` too
        assert runs.zero_shot, "a method without zero-shot mode: check its DDP refusal with references"
        images = ["--input", str(runs.target / "ring" / "test"), "--out", str(tmp_path / "predicted")]
        codes = [code, main(["predict", args[1], *COMMON, *runs.checkpoint, *DDP, *images])]
        errors = capsys.readouterr().err.strip().split("\n")
        assert codes == [2, 2] and len(errors) == 2, errors
        assert all(error.startswith(f"zsad: error: {refusal}") for error in errors), errors
        assert not run_dir.exists()  # refused from the config, before a run folder
        return
    assert code == 0
    printed = capsys.readouterr().out
    assert "img AUROC" in printed and all(category in printed for category in CATEGORIES)
    assert _targets(run_dir) == _targets(runs.evaluation)  # every metric and F1 threshold
    assert not list(run_dir.rglob("*.tmp"))
    one, two = runs.outputs(runs.evaluation), runs.outputs(run_dir)
    # each process wrote the maps (and masks) of its images, rank 0 the image scores, the checksums and the
    # pictures of both: the same files, byte for byte
    maps = _files(one / "maps")
    assert maps == _files(two / "maps") and len([name for name in maps if name.suffix == ".npy"]) == 14
    different = [
        name for name in maps if (one / "maps" / name).read_bytes() != (two / "maps" / name).read_bytes()
    ]
    assert not different, f"2 processes wrote other files than 1: {different}"
    assert _files(one / "plots") == _files(two / "plots") and _files(one / "plots")
    for name in _files(one / "plots"):
        if name.suffix == ".csv":
            assert (one / "plots" / name).read_text() == (two / "plots" / name).read_text(), name


def test_a_k_shot_evaluation_on_two_processes_equals_one_or_the_method_is_refused(runs, tmp_path, capsys):
    """A method with a few-shot mode (``MethodSpec.protocols``) evaluates 1-shot the same on one and two
    processes (every process builds the same memory; category-level scores are combined once complete);
    any other method is refused in one line before a run folder exists."""
    few_shot = ["protocol.shots=1", "eval.save_maps=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    capsys.readouterr()
    code = main(runs.args("test", one, *runs.checkpoint, *few_shot))
    if not runs.spec.few_shot:
        assert code == 2 and not one.exists()
        assert capsys.readouterr().err.strip() == (
            f"zsad: error: method '{runs.spec.name}' has no few-shot mode (its protocols: "
            f"{', '.join(runs.spec.protocols)}); evaluate it {shots_label(0, runs.spec.name)} (protocol.shots=0)"
        )
        return
    assert code == 0 and main(runs.args("test", two, *runs.checkpoint, *few_shot, *DDP)) == 0
    draws = [json.loads((run / "results.json").read_text())["draws"] for run in (one, two)]
    assert draws[0] == draws[1] and draws[0][0]["targets"]["synthetic"]  # references, every metric
    scores = one / "draws" / "0" / "maps" / "synthetic" / "image_scores.csv"
    assert scores.read_text() == (two / scores.relative_to(one)).read_text()
    if runs.zero_shot:
        assert (
            _targets(one)["synthetic"]["mean"] != _targets(runs.evaluation)["synthetic"]["mean"]
        )  # not zero-shot
