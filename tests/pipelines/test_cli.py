"""End-to-end ``zsad`` runs on the tiny CLIP and synthetic data, and the errors users see."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from datamodules.images import load_mask
from pipelines.cli import main
from pipelines.report import build_report
from pipelines.run_state import write_status

FAST = [
    "logger.wandb.mode=disabled",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "method.backbone.image_size=32",
]


def write_experiment(tmp_path: Path, source: Path, target: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name, root in (("src", source), ("tgt", target)):
        (data / f"{name}.yaml").write_text(
            f"name: synthetic\nroot: {root}\nbatch_size: 4\neval_batch_size: 5\nnum_workers: 0\n"
        )
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "defaults:\n  method: anomalyclip_tiny\n"
        f"  source: {data / 'src.yaml'}\n  targets: [{data / 'tgt.yaml'}]\n"
        f"name: e2e\noutput_dir: {tmp_path / 'runs'}\ntrainer: {{accelerator: cpu, devices: '1'}}\n"
    )
    return experiment


@pytest.mark.slow
def test_test_loop_metrics_equal_sklearn(tmp_path, synthetic_pair):
    """The numbers in results.json equal sklearn on the scores the model gives the same images."""
    import torch

    from datamodules.datamodule import AnomalyDataModule
    from lightning_modules.registry import get_method
    from pipelines import runner
    from pipelines.config import compose, to_object

    source, target = synthetic_pair
    cfg = to_object(
        compose(
            write_experiment(tmp_path, source, target),
            [*FAST, "trainer.max_epochs=1", f"run_dir={tmp_path / 'r'}"],
        )
    )
    outcome = runner.run(cfg)
    module = runner.build_module(cfg, get_method(cfg.method.name))
    module.load_trained_weights(str(outcome.checkpoint))
    datamodule = AnomalyDataModule(cfg.targets[0], image_size=32)
    scores, labels, categories, pixel_scores, pixel_labels = [], [], [], [], []
    for batch in datamodule.test_dataloader():
        with torch.no_grad():
            s, maps = module.predict_batch(batch)
        scores += s.tolist()
        labels += batch["label"].tolist()
        categories += [datamodule.categories[i] for i in batch["category_id"]]
        pixel_scores += list(maps.numpy())
        pixel_labels += list(batch["mask"].numpy())
    results = outcome.results["targets"]["synthetic"]["categories"]
    for category in set(categories):
        idx = [i for i, c in enumerate(categories) if c == category]
        y = np.array([labels[i] for i in idx])
        s = np.array([scores[i] for i in idx])
        assert results[category]["image_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        assert results[category]["image_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
        px = np.concatenate([pixel_scores[i].ravel() for i in idx])
        gt = np.concatenate([pixel_labels[i].ravel() for i in idx]) > 0.5
        # pixel scores are stored as float32 by default (eval.pixel_score_dtype): the maps' own values
        assert results[category]["pixel_auroc"] == pytest.approx(roc_auc_score(gt, px), abs=1e-6)
        assert results[category]["aupro_cflow"] is not None


@pytest.mark.slow
def test_wandb_offline_run_files_are_written(tmp_path, synthetic_pair):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    overrides = [o for o in FAST if not o.startswith("logger")] + [
        "trainer.max_epochs=1",
        f"run_dir={tmp_path / 'w'}",
    ]
    assert main(["run", str(experiment), *overrides, "logger.wandb.mode=offline"]) == 0
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


@pytest.mark.slow
def test_saved_outputs_mirror_the_dataset_and_evaluate_maps_reproduces_the_run(
    tmp_path, synthetic_pair, capsys
):
    """eval.save_maps writes one float32 map per test image where `zsad evaluate-maps` looks for it and the
    method's image scores beside them; at the ground truth's size (32 px here) that command then gives all
    of the run's metrics again."""
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    run_dir = tmp_path / "m"
    args = [
        "run",
        str(experiment),
        *FAST,
        "trainer.max_epochs=1",
        "eval.save_maps=true",
        f"run_dir={run_dir}",
    ]
    assert main(args) == 0
    maps_dir = run_dir / "maps" / "synthetic"
    images = sorted(p.relative_to(target) for p in target.glob("*/test/*/*.png"))
    saved = sorted(p.relative_to(maps_dir) for p in maps_dir.rglob("*.npy"))
    assert saved == [p.with_suffix(".npy") for p in images] and len(saved) == 14
    amap = np.load(maps_dir / saved[0])
    assert amap.dtype == np.float32 and amap.shape == (32, 32) and np.isfinite(amap).all()
    rows = list(csv.DictReader((maps_dir / "image_scores.csv").open()))
    assert [r["image"] for r in rows] == [p.with_suffix("").as_posix() for p in images]
    assert {r["label"] for r in rows if "/test/good/" in r["image"]} == {"0"}
    assert {r["label"] for r in rows if "/test/good/" not in r["image"]} == {"1"}

    record = json.loads((maps_dir / "dataset.json").read_text())
    assert record == {
        "dataset": "synthetic",
        "root": str(target),
        "options": {},
        "version": "synthetic",
        "split": "test",
        "categories": ["cells", "ring"],
        "data_fingerprint": json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"][
            "data_fingerprint"
        ],
    }

    run = json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]["categories"]
    maps = ["--maps", str(maps_dir)]  # dataset, root, options and split come from dataset.json
    scores = ["--image-scores", str(maps_dir / "image_scores.csv")]
    assert main(["evaluate-maps", *maps, *scores, "--output", str(tmp_path / "all.json")]) == 0
    evaluated = json.loads((tmp_path / "all.json").read_text())
    assert (evaluated["dataset"], evaluated["gt_root"], evaluated["split"]) == (
        "synthetic",
        str(target),
        "test",
    )
    again = evaluated["per_category"]
    assert set(again) == set(run) == {"ring", "cells"}
    for category, metrics in run.items():
        for key in (
            "image_auroc",
            "image_ap",
            "image_f1_max",
            "pixel_auroc",
            "pixel_ap",
            "aupro",
            "aupro_cflow",
        ):
            assert again[category][key] == pytest.approx(metrics[key], abs=1e-12), (category, key)
    # without --image-scores the image score is the map's maximum: pixel metrics unchanged; an explicit
    # --dataset other than the recorded one is used (the generic MVTec-layout reader here) and reported
    other = ["--dataset", "mvtec_layout", "--gt-root", str(target)]
    assert main(["evaluate-maps", *maps, *other, "--output", str(tmp_path / "max.json")]) == 0
    by_max = json.loads((tmp_path / "max.json").read_text())
    assert by_max["image_score"] == "maximum of the anomaly map"
    assert any(n.startswith("--dataset mvtec_layout differs from the synthetic") for n in by_max["notes"])
    for category, metrics in run.items():
        assert by_max["per_category"][category]["aupro"] == pytest.approx(metrics["aupro"], abs=1e-12)
    # beside each map the mask it was scored against: with them `zsad report --bootstrap` resamples the
    # run's own inputs (its point estimates are the run's metrics: no note says otherwise)
    masks = sorted(p.relative_to(maps_dir) for p in maps_dir.rglob("*.mask.png"))
    assert [str(m).replace(".mask.png", ".npy") for m in masks] == [str(p) for p in saved]
    defect = next(p for p in images if "/good/" not in str(p))
    truth = target / defect.parts[0] / "ground_truth" / defect.parent.name / f"{defect.stem}_mask.png"
    np.testing.assert_array_equal(load_mask(maps_dir / defect.with_suffix(".mask.png")), load_mask(truth))
    report = build_report([str(run_dir)], out=str(tmp_path / "rep"), wandb_mode="disabled", bootstrap=20)
    assert "saved maps give other" not in report.markdown and "95% percentile bootstrap" in report.markdown

    # every file written is in checksums.sha256, which the standard tool checks too; a map changed since
    # (one bit of its data) is refused by name, not scored
    listed = (maps_dir / "checksums.sha256").read_text().splitlines()
    assert (
        len(listed) == 14 + len(masks) + 2  # maps, the masks beside them, image_scores.csv, dataset.json
        and subprocess.run(["sha256sum", "--check", "--quiet", "checksums.sha256"], cwd=maps_dir).returncode
        == 0
    )
    damaged = maps_dir / saved[3]
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0x01
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["evaluate-maps", *maps, "--output", str(tmp_path / "no.json")]) == 2
    err = (
        capsys.readouterr().err.strip().splitlines()[-1]
    )  # after the progress lines of the categories before
    assert err.startswith("zsad: error: ")
    assert (
        f"{damaged} does not match its SHA-256 in {maps_dir / 'checksums.sha256'}" in err and "\n" not in err
    )
    assert not (tmp_path / "no.json").exists()


def test_evaluate_maps_says_which_image_has_no_score(tmp_path, synthetic_pair, capsys):
    _, target = synthetic_pair
    maps_dir = tmp_path / "maps"
    for image in target.glob("*/test/*/*.png"):
        file = maps_dir / image.relative_to(target).with_suffix(".npy")
        file.parent.mkdir(parents=True, exist_ok=True)
        np.save(file, np.zeros((32, 32), dtype=np.float32))
    args = ["evaluate-maps", "--gt-root", str(target), "--maps", str(maps_dir), "--image-scores"]
    (tmp_path / "scores.csv").write_text("image,score\nring/test/good/000,0.5\n")
    assert main([*args, str(tmp_path / "scores.csv")]) == 2
    assert "has no score for" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("path,value\nx,1\n")
    assert main([*args, str(tmp_path / "bad.csv")]) == 2
    assert "needs the columns 'image' and 'score'" in capsys.readouterr().err


def test_missing_dataset_root_is_one_line_and_exit_2(tmp_path, synthetic_pair, capsys):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    code = main(["run", str(experiment), *FAST, f"targets.0.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("zsad: error: dataset root for 'synthetic' does not exist") and "\n" not in err
    assert f"generate it: zsad data synth --out {tmp_path / 'nowhere'} --style " in err  # not "download it"
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder


def test_config_typo_is_one_line_and_exit_2(capsys):
    assert main(["run", "demo", "method.lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Did you mean: 'lr'" in err and "\n" not in err


def test_missing_weights_is_one_line_and_exit_2(tmp_path, synthetic_pair, capsys):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    code = main(
        [
            "run",
            str(experiment),
            "method=anomalyclip",
            f"method.backbone.cache_dir={tmp_path / 'cache'}",
            "logger.wandb.mode=disabled",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not available offline" in err and "\n" not in err


def test_test_without_checkpoint_says_what_to_pass(tmp_path, synthetic_pair, capsys):
    source, target = synthetic_pair
    assert main(["test", str(write_experiment(tmp_path, source, target)), *FAST]) == 2
    assert "checkpoint=" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback():
    from datamodules.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "run", "demo", "method.lrr=0.1"])


@pytest.mark.slow
def test_a_restarted_run_keeps_its_folder_and_wandb_run(tmp_path, synthetic_pair, caplog):
    """What a requeued SLURM task does: the same run_dir resumes from last.ckpt and logs to the same W&B id."""
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    overrides = [o for o in FAST if not o.startswith("logger")] + [
        f"run_dir={tmp_path / 'r'}",
        "logger.wandb.mode=offline",
    ]
    assert main(["train", str(experiment), *overrides, "trainer.max_epochs=1"]) == 0
    write_status(
        tmp_path / "r", "preempted"
    )  # as a requeued task leaves it (a finished run is not re-entered)
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["train", str(experiment), *overrides, "trainer.max_epochs=2"]) == 0
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert f"Restoring states from the checkpoint path at {last}" in caplog.text  # resumed, not restarted
    runs = sorted((tmp_path / "r" / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<id>, with "-1" appended by W&B when both runs start in the same second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([0-9a-z]+)(-\d+)?", r.name).group(1) for r in runs}
    assert len(runs) == 2 and len(ids) == 1  # one W&B id


@pytest.mark.slow
def test_a_run_says_each_start_up_line_once(tmp_path, synthetic_pair):
    """Lightning's accelerator lines (one per Trainer, a run has two) and W&B's offline header (the same as
    zsad's closing line) in the output of a real `zsad run`, with W&B's output not silenced."""
    experiment = write_experiment(tmp_path, *synthetic_pair)
    overrides = [o for o in FAST if not o.startswith("logger")] + ["logger.wandb.mode=offline"]
    env = {key: value for key, value in os.environ.items() if key != "WANDB_SILENT"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", str(experiment), *overrides, "trainer.max_epochs=1",
         f"run_dir={tmp_path / 'r'}"],
        cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for line in ("GPU available: ", "TPU available: ", "W&B run saved offline; upload it with: wandb sync"):
        assert output.count(line) == 1, output
    assert "Run data is saved locally" not in output and "syncing is set to" not in output, output


HEAVY = ("torch", "lightning", "open_clip")
# Runs a zsad command in a fresh interpreter and prints, at exit, which heavy packages it imported.
_IMPORT_PROBE = """
import atexit, sys
atexit.register(lambda: print("imported:", *[m for m in {heavy} if m in sys.modules], file=sys.stderr))
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "command",
    [["--help"], ["methods"], ["experiments"], ["data", "list"], ["config", "show", "demo"]],
    ids=" ".join,
)
def test_listing_commands_import_neither_torch_lightning_nor_open_clip(command):
    """What users run to look around answers at once (benchmarks/cli_startup.py): method metadata comes
    from the specs and configs; torch, Lightning and open_clip load when a job starts."""
    probe = _IMPORT_PROBE.format(heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=120
    )
    imported = done.stderr.strip().splitlines()[-1]
    assert imported.startswith("imported:") and imported.split()[1:] == [], (command, imported)
    assert done.returncode == 0 and done.stdout, done.stderr


def test_a_broken_subcommand_fails_loudly_instead_of_disappearing(monkeypatch, capsys):
    """Feature subcommands load their module when they run: a module that cannot be imported is an
    ImportError for that command, and `--help` still lists it."""
    import pipelines
    from pipelines.cli import build_parser

    monkeypatch.setitem(sys.modules, "pipelines.predict", None)  # `import pipelines.predict` now fails
    # ...and `from pipelines import predict` too, also after an earlier test imported it (the package's
    # attribute would be found before sys.modules is consulted)
    monkeypatch.delattr(pipelines, "predict", raising=False)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "predict" in capsys.readouterr().out
    with pytest.raises(ImportError):
        main(["predict", "demo", "--input", "x", "--out", "y"])
    with pytest.raises(ImportError):
        build_parser()  # every subcommand's arguments (what a test of the whole CLI builds)


@pytest.mark.parametrize("command", ["run", "train"])
def test_run_and_train_refuse_a_checkpoint_they_would_ignore(tmp_path, synthetic_pair, capsys, command):
    """`zsad run/train ... checkpoint=X` trained fresh weights and ignored X (results.json then filed the fresh
    weights' numbers under checkpoint X in config.yaml, and zsad report made them X's replicate): refused in
    one line, before any run folder exists."""
    experiment = write_experiment(tmp_path, *synthetic_pair)
    checkpoint = tmp_path / "other" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not read")
    run_dir = tmp_path / "r"
    code = main([command, str(experiment), *FAST, f"checkpoint={checkpoint}", f"run_dir={run_dir}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "zsad test" in err and "\n" not in err
    assert not run_dir.exists()
