"""`zsad predict` end to end on the tiny CLIP: the same numbers as `zsad test`, every threshold source,
DDP, and the errors users see."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from datamodules.images import load_image_rgb
from pipelines.cli import main
from pipelines.visualize import overlay

COMMON = ["trainer.accelerator=cpu", "trainer.devices=1", "logger.wandb.mode=disabled"]


def _checked(out: Path) -> set[str]:
    """The files ``checksums.sha256`` lists (``sha256sum`` format), each checked against its bytes."""
    import hashlib

    listed = {}
    for line in (out / "checksums.sha256").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    return set(listed)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, synthetic_pair):
    """A `zsad test` of CLIP (tiny) on the synthetic target, with its maps and image scores saved."""
    _, target = synthetic_pair
    base = tmp_path_factory.mktemp("predict")
    data = base / "tgt.yaml"
    data.write_text(f"name: synthetic\nroot: {target}\neval_batch_size: 4\nnum_workers: 0\n")
    run_dir = base / "eval"
    overrides = ["method=clip_tiny", f"targets=[{data}]", *COMMON, "trainer.enable_progress_bar=false"]
    assert (
        main(
            [
                "test",
                "clip_all",
                *overrides,
                "eval.save_maps=true",
                "eval.visualize=false",
                f"run_dir={run_dir}",
            ]
        )
        == 0
    )
    return target, run_dir


def test_predictions_equal_the_evaluation_and_follow_the_runs_thresholds(evaluated, tmp_path, capsys):
    target, run_dir = evaluated
    out = tmp_path / "out"
    # a folder and a glob; CLIP's texts name the object, so it is the evaluation's word for this category
    inputs = [str(target / "ring" / "test" / "good"), str(target / "ring" / "test" / "[a-fh-z]*" / "*.png")]
    args = ["predict", "clip_all", "method=clip_tiny", *COMMON, "--out", str(out), "--map-format", "both"]
    args += [
        "--threshold-from",
        str(run_dir),
        "--threshold-category",
        "synthetic/ring",
        "--batch-size",
        "3",
        "--object",
        "ring",
    ]
    assert main([*args, "--input", *inputs]) == 0
    printed = capsys.readouterr().out  # not a terminal: whole lines, no carriage-return redraws
    assert re.search(r"^Predicting DataLoader 0: 100%.* 3/3 ", printed, re.M) and "\r" not in printed
    thresholds = json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]["categories"][
        "ring"
    ]
    image_t, pixel_t = thresholds["f1_thresholds"]["image"], thresholds["f1_thresholds"]["pixel"]
    evaluation = {
        row["image"]: float(row["score"])
        for row in _rows(run_dir / "maps" / "synthetic" / "image_scores.csv")
    }
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 7 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    maps = {}
    for row in rows:
        path = Path(row["path"])
        key = path.relative_to(target).with_suffix("").as_posix()
        score = float(row["score"])
        assert score == pytest.approx(
            evaluation[key], rel=1e-5
        )  # same preprocessing and model (other batches)
        assert int(row["label"]) == int(score >= image_t)
        name = (
            path.relative_to(target / "ring" / "test").with_suffix("").as_posix()
        )  # below the common folder
        anomaly_map = tifffile.imread(out / "maps" / f"{name}.tiff")
        assert anomaly_map.dtype == np.float32 and anomaly_map.shape == (32, 32)  # the image's own size
        np.testing.assert_array_equal(anomaly_map, np.load(out / "maps" / f"{name}.npy"))
        saved = np.load(run_dir / "maps" / "synthetic" / f"{key}.npy")  # float16, at the evaluation size
        np.testing.assert_allclose(anomaly_map, saved.astype(np.float32), rtol=2**-10, atol=1e-6)
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        np.testing.assert_array_equal(mask == 255, anomaly_map.astype(float) >= pixel_t)
        maps[name] = anomaly_map
    # every map, mask and table is in checksums.sha256 with the SHA-256 of its bytes
    data = {p.relative_to(out).as_posix() for d in ("maps", "masks") for p in (out / d).rglob("*.*")}
    assert len(data) == 3 * 7 and _checked(out) == data | {"predictions.csv", "prediction.json"}
    record = json.loads((out / "prediction.json").read_text())
    assert record["thresholds"]["image"] == image_t and "synthetic/ring" in record["thresholds"]["source"]
    # one colour range for the whole run, the maps' own: every overlay uses it, every image has a panel
    low, high = min(m.min() for m in maps.values()), max(m.max() for m in maps.values())
    assert record["overlay_range"]["low"] == low and record["overlay_range"]["high"] == high
    assert record["overlay_range"]["from_maps"] and "min and max of all 7" in record["overlay_range"]["rule"]
    # the inputs are ring images, as the thresholds' category: no warning but the one the labels imply (the
    # random model's F1-optimal threshold of 7 images can be their lowest score, on some CPUs' rounding)
    all_anomalous = all(int(r["label"]) == 1 for r in rows)
    expected = ["all 7 images are labelled anomalous: every score is >= the image threshold"] * all_anomalous
    assert [w.split(" (")[0].rsplit(" ", 1)[0] for w in record["warnings"]] == expected
    for name, anomaly_map in maps.items():
        image = load_image_rgb(str(target / "ring" / "test" / f"{name}.png"))
        drawn = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        np.testing.assert_array_equal(drawn, overlay(image, anomaly_map, low, high))
        assert Image.open(out / "panels" / f"{name}.png").size[1] > 256  # title above 256 px tiles
    # a second prediction into the same folder would mix two runs' files: refused
    assert main([*args, "--input", *inputs]) == 2
    assert "already holds predictions" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_predict_every_image_once(evaluated, tmp_path):
    target, run_dir = evaluated
    out = tmp_path / "two"
    args = [
        "predict",
        "clip_all",
        "method=clip_tiny",
        "trainer.accelerator=cpu",
        "logger.wandb.mode=disabled",
    ]
    args += ["trainer.devices=2", "trainer.strategy=ddp_spawn", "--out", str(out), "--object", "ring"]
    args += ["--image-threshold", "0.5", "--batch-size", "2", "--input", str(target / "ring" / "test")]
    assert main(args) == 0
    rows = _rows(out / "predictions.csv")
    evaluation = {
        row["image"]: float(row["score"])
        for row in _rows(run_dir / "maps" / "synthetic" / "image_scores.csv")
    }
    keys = [Path(r["path"]).relative_to(target).with_suffix("").as_posix() for r in rows]
    assert sorted(keys) == sorted(k for k in evaluation if k.startswith("ring/"))  # each image exactly once
    assert [float(r["score"]) for r in rows] == pytest.approx([evaluation[k] for k in keys], rel=1e-5)
    assert [int(r["label"]) for r in rows] == [int(float(r["score"]) >= 0.5) for r in rows]
    assert len(list((out / "maps").rglob("*.tiff"))) == 7 and not list(out.rglob("*.tmp*"))
    maps = {p.relative_to(out).as_posix() for p in (out / "maps").rglob("*.tiff")}
    assert _checked(out) == maps | {"predictions.csv", "prediction.json"}  # both processes' maps listed


def test_thresholds_at_a_false_positive_rate_of_normal_images(evaluated, tmp_path):
    target, _ = evaluated
    out, normal = tmp_path / "fpr", target / "ring" / "test" / "good"
    args = ["predict", "clip_all", "method=clip_tiny", *COMMON, "trainer.enable_progress_bar=false"]
    args += [
        "--out",
        str(out),
        "--normal-dir",
        str(normal),
        "--fpr",
        "0.34",
        "--batch-size",
        "3",
        "--input",
        str(normal),
    ]
    assert main(args) == 0
    rows = _rows(out / "predictions.csv")  # the normal images themselves, in the same batches
    scores = sorted((float(r["score"]) for r in rows), reverse=True)
    thresholds = json.loads((out / "prediction.json").read_text())["thresholds"]
    # the lowest threshold at which at most 34% of the 3 normal images (i.e. 1) are flagged
    # (the next float32 above the second-highest score: scores are float32)
    assert thresholds["image"] == np.nextafter(np.float32(scores[math.floor(0.34 * 3)]), np.float32(np.inf))
    assert sum(int(r["label"]) for r in rows) == 1
    pixels = np.concatenate([tifffile.imread(p).reshape(-1) for p in (out / "maps").rglob("*.tiff")]).astype(
        float
    )
    next_lower = pixels[pixels < thresholds["pixel"]].max()  # any lower threshold flags this pixel value too
    assert np.mean(pixels >= thresholds["pixel"]) <= 0.34 < np.mean(pixels >= next_lower)
    assert "3 normal images at FPR 0.34" in thresholds["source"]


def test_errors_name_what_is_wrong(tmp_path, synthetic_pair, capsys):
    _, target = synthetic_pair
    image = str(target / "ring" / "test" / "good" / "000.png")
    out = ["--out", str(tmp_path / "o")]
    assert main(["predict", "clip_all", "method=anomalyclip_tiny", *COMMON, "--input", image, *out]) == 2
    assert "checkpoint=" in capsys.readouterr().err  # a trained method needs its weights
    references = ["--references", str(target / "ring" / "train" / "good")]
    assert main(["predict", "clip_all", *COMMON, "--input", image, *out, *references]) == 2
    assert "has no few-shot mode: it takes no --references" in capsys.readouterr().err
    missing = f"checkpoint={tmp_path / 'gone.ckpt'}"
    assert (
        main(["predict", "clip_all", "method=anomalyclip_tiny", missing, *COMMON, "--input", image, *out])
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    # an unusable checkpoint is named for what it is before any input is read (garbage.png is unreadable)
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    run = tmp_path / "vand_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: vand_visa_to_mvtec\nmethod: {name: vand}\n")
    torch.save({"state_dict": {}, "zsad": {"method": "vand"}}, run / "checkpoints" / "last.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(99)}}, tmp_path / "whole.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:700])
    (tmp_path / "notes.ckpt").write_text("these are my notes\n")
    for file, says in (
        (
            tmp_path / "cut.ckpt",
            "is truncated or corrupt (its zip directory, at the end of the file, is missing",
        ),
        (tmp_path / "notes.ckpt", "is not a checkpoint: it is a text file"),
        (
            run / "checkpoints" / "last.ckpt",
            "is a checkpoint of method 'vand', not of 'anomalyclip' (this config's method): evaluate it with "
            f"`zsad test vand_visa_to_mvtec checkpoint={run / 'checkpoints' / 'last.ckpt'}`",
        ),
    ):
        inputs = ["--input", image, str(tmp_path / "garbage.png")]
        assert (
            main(
                [
                    "predict",
                    "clip_all",
                    "method=anomalyclip_tiny",
                    f"checkpoint={file}",
                    *COMMON,
                    *inputs,
                    *out,
                ]
            )
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"zsad: error: {file} {says}") and "\n" not in err, err  # no "unreadable" line
    assert (
        main(
            ["predict", "clip_all", "method=clip_tiny", *COMMON, "--input", str(tmp_path / "none*.png"), *out]
        )
        == 2
    )
    assert "matches no image" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "clip_all",
                "method=clip_tiny",
                "--input",
                image,
                *out,
                "--threshold-from",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "results.json not found" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "clip_all",
                "--input",
                image,
                *out,
                "--image-threshold",
                "1",
                "--normal-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "choose one source of thresholds" in capsys.readouterr().err


def test_any_format_and_size_gets_a_map_at_its_own_size_and_unreadable_files_are_listed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shots = tmp_path / "shots"
    (shots / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 61, 3), dtype=np.uint8)).save(shots / "rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (23, 37, 4), dtype=np.uint8), mode="RGBA").save(shots / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (50, 19), dtype=np.uint16)).save(shots / "sub" / "deep16.tif")
    Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8)).save(shots / "sub" / "gray.bmp")
    (shots / "garbage.png").write_bytes(b"not an image")
    whole = (shots / "rgba.png").read_bytes()
    (shots / "sub" / "cut.png").write_bytes(whole[: len(whole) // 2])  # header fine, pixels missing
    out = tmp_path / "out"
    args = ["predict", "clip_all", "method=clip_tiny", *COMMON, "trainer.enable_progress_bar=false"]
    assert main([*args, "--out", str(out), "--batch-size", "2", "--input", str(shots)]) == 0
    assert capsys.readouterr().err.count("skipped unreadable image") == 2
    expected = {"rgb": (40, 61), "rgba": (23, 37), "sub/deep16": (50, 19), "sub/gray": (33, 33)}
    for name, shape in expected.items():
        assert tifffile.imread(out / "maps" / f"{name}.tiff").shape == shape
        assert Image.open(out / "overlays" / f"{name}.png").size == shape[::-1]
    assert not (out / "masks").exists()  # no pixel threshold given
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 4 and all(r["label"] == "" for r in rows)
    assert sorted(Path(r["path"]).name for r in _rows(out / "unreadable.csv")) == ["cut.png", "garbage.png"]


def test_thresholds_of_another_category_and_maps_outside_the_given_range_are_warned_about(
    evaluated, tmp_path, capsys
):
    target, run_dir = evaluated
    out = tmp_path / "warned"
    args = ["predict", "clip_all", "method=clip_tiny", *COMMON, "trainer.enable_progress_bar=false"]
    args += ["--out", str(out), "--threshold-from", str(run_dir), "--threshold-category", "synthetic/cells"]
    args += ["--overlay-range", "5", "6", "--input", str(target / "ring" / "test" / "good")]
    assert main(args) == 0
    err = capsys.readouterr().err
    record = json.loads((out / "prediction.json").read_text())
    assert record["overlay_range"] == {"low": 5.0, "high": 6.0, "rule": "--overlay-range", "from_maps": False}
    other, outside = record["warnings"][:2]
    assert other.startswith("3 of 3 inputs") and "not images of synthetic/cells" in other
    assert "outside --overlay-range 5 6: 100.0% of the pixels" in outside
    assert all(f"zsad: warning: {w}" in err for w in record["warnings"])


def test_mvtec_ad2_submission_is_in_the_servers_form(tmp_path, capsys):
    """--submission mvtec_ad2: float16 anomaly_images/{object}/{split}/{NNN}_{kind}.tiff at each image's size
    and 0/255 anomaly_images_thresholded/*.png, as MVTec's upload checker requires; incomplete splits named;
    an image outside the private test sets is refused before predicting."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mvtec_ad_2"
    for split, kind in (("test_private", "regular"), ("test_private_mixed", "mixed")):
        for i in range(2):
            path = root / "can" / split / f"{i:03d}_{kind}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    args = ["predict", "clip_all", "method=clip_tiny", *COMMON, "trainer.enable_progress_bar=false"]
    inputs = ["--input", str(root / "can" / "test_private"), str(root / "can" / "test_private_mixed")]
    submission = ["--submission", "mvtec_ad2", "--pixel-threshold", "0.5"]
    assert main([*args, "--out", str(out), *submission, *inputs]) == 0
    printed = capsys.readouterr().out
    for name in ("can/test_private/001_regular", "can/test_private_mixed/000_mixed"):
        amap = tifffile.imread(out / "anomaly_images" / f"{name}.tiff")
        assert amap.dtype == np.float16 and amap.shape == (30, 41)
        mask = np.asarray(Image.open(out / "anomaly_images_thresholded" / f"{name}.png"))
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        assert (out / "panels" / f"{name}.png").is_file()  # drawn from the server's map and mask
    assert not (out / "maps").exists() and not (out / "masks").exists()
    assert (
        "can/test_private: 2 of 321 images" in printed and "walnuts/test_private_mixed: 0 of 228" in printed
    )
    assert json.loads((out / "prediction.json").read_text())["submission"] == "mvtec_ad2"

    stray = root / "can" / "test_public" / "good" / "000_regular.png"
    stray.parent.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(stray)
    assert main([*args, "--out", str(tmp_path / "o2"), *submission, "--input", str(root)]) == 2
    assert (
        "test_public/good/000_regular is not an image of MVTec AD 2's private test sets"
        in capsys.readouterr().err
    )


def test_an_images_random_draws_do_not_depend_on_the_other_inputs(tmp_path):
    """AnoVL's test-time adaptation draws per image (lightning_modules/stochastic.py): under ``zsad predict``
    an image's key is its content, not its path below the inputs' common folder, which moves when inputs
    from another folder join; the same file then gets the same map in both calls, and a copy of it too
    (``tta.reset=image``: each image adapted alone; the authors' policy carries the optimizer over from the
    images before it)."""
    rng = np.random.default_rng(1)
    first, other = tmp_path / "line" / "a", tmp_path / "elsewhere" / "b"
    for folder in (first, other):
        folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(first / f"{i}.png")
    (other / "copy.png").write_bytes((first / "0.png").read_bytes())
    args = ["predict", "clip_all", "method=anovl_tiny", "method.tta.reset=image", *COMMON]
    args += ["trainer.enable_progress_bar=false"]
    assert main([*args, "--out", str(tmp_path / "alone"), "--input", str(first)]) == 0
    assert main([*args, "--out", str(tmp_path / "joined"), "--input", str(first), str(other)]) == 0
    for i in range(2):  # common folder: line/a alone, tmp_path joined
        alone = tifffile.imread(tmp_path / "alone" / "maps" / f"{i}.tiff")
        joined = tifffile.imread(tmp_path / "joined" / "maps" / "line" / "a" / f"{i}.tiff")
        np.testing.assert_array_equal(joined, alone)
    copy = tifffile.imread(tmp_path / "joined" / "maps" / "elsewhere" / "b" / "copy.tiff")
    np.testing.assert_array_equal(copy, tifffile.imread(tmp_path / "alone" / "maps" / "0.tiff"))


def test_a_folder_with_an_unfinished_predictions_files_is_refused(tmp_path, synthetic_pair, capsys):
    """An --out where an interrupted `zsad predict` left maps (no predictions.csv yet): a new prediction there
    would leave them beside its own files, unlisted in its checksums.sha256 (which must list exactly the
    folder's maps, masks and tables): refused, as a finished one is."""
    _, target = synthetic_pair
    out = tmp_path / "out"
    (out / "maps").mkdir(parents=True)
    np.save(out / "maps" / "other_image.npy", np.zeros((4, 4), np.float32))  # the interrupted run's
    args = ["predict", "clip_all", "method=clip_tiny", *COMMON, "trainer.enable_progress_bar=false"]
    image = str(target / "ring" / "test" / "good" / "000.png")
    assert main([*args, "--out", str(out), "--map-format", "npy", "--input", image]) == 2
    assert "unfinished prediction" in capsys.readouterr().err
    assert not (out / "checksums.sha256").exists()
    (tmp_path / "empty" / "maps").mkdir(parents=True)  # empty folders hold nothing to mix
    assert main([*args, "--out", str(tmp_path / "empty"), "--input", image]) == 0
