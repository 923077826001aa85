"""``zsad evaluate-maps`` on a tiny MVTec AD layout written here (never real data)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import roc_auc_score

from datamodules.errors import ZsadError
from lightning_modules.metrics import aupro, legacy_cflow_aupro
from pipelines import evaluate_maps

REPO = Path(__file__).resolve().parents[3]


def write_mvtec(root: Path, maps_root: Path, map_size: dict[str, int] | None = None) -> dict:
    """Two classes, 3 good + 3 defective (2 defect kinds) 16x16 images; maps .npy (disc) / .tiff (weave)."""
    rng = np.random.default_rng(0)
    truth: dict = {}
    for cls, suffix in (("disc", ".npy"), ("weave", ".tiff")):
        truth[cls] = {"maps": [], "masks": [], "labels": []}
        for defect, n in (("good", 3), ("crack", 2), ("hole", 1)):
            (root / cls / "test" / defect).mkdir(parents=True)
            (root / cls / "train" / "good").mkdir(parents=True, exist_ok=True)
            (maps_root / cls / "test" / defect).mkdir(parents=True)
            for i in range(n):
                stem = f"{i:03d}"
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    root / cls / "test" / defect / f"{stem}.png"
                )
                mask = np.zeros((16, 16), dtype=bool)
                if defect != "good":
                    mask[3 + i : 8 + i, 4:9] = True
                    (root / cls / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask.astype(np.uint8) * 255).save(
                        root / cls / "ground_truth" / defect / f"{stem}_mask.png"
                    )
                amap = rng.random((16, 16)).astype(np.float32) + 0.5 * mask
                size = (map_size or {}).get(cls)
                saved = amap if size is None else np.kron(amap, np.ones((size // 16, size // 16), np.float32))
                if suffix == ".npy":
                    np.save(maps_root / cls / "test" / defect / f"{stem}.npy", saved)
                else:
                    tifffile.imwrite(maps_root / cls / "test" / defect / f"{stem}.tiff", saved[None])
                truth[cls]["maps"].append(amap)
                truth[cls]["masks"].append(mask)
                truth[cls]["labels"].append(int(defect != "good"))
    return truth


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate_maps.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_metrics_match_direct_computation(tmp_path, capsys):
    truth = write_mvtec(tmp_path / "gt", tmp_path / "maps")
    out = tmp_path / "m.json"
    assert (
        evaluate_maps.run(
            parse("--gt-root", str(tmp_path / "gt"), "--maps", str(tmp_path / "maps"), "--output", str(out))
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["fpr_limit"] == 0.3 and result["pixel_score_dtype"] == "float32"
    assert "aupro" in result["metrics"] and "aupro_cflow" in result["metrics"]
    for cls, t in truth.items():
        got = result["per_category"][cls]
        maps, masks = t["maps"], t["masks"]
        scores = [m.max() for m in maps]
        assert got["image_auroc"] == pytest.approx(roc_auc_score(t["labels"], scores), abs=1e-12)
        flat_y = np.concatenate([m.ravel() for m in masks])
        flat_s = np.concatenate([m.ravel() for m in maps])
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(flat_y, flat_s), abs=1e-12)
        assert got["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
        assert got["aupro_cflow"] == pytest.approx(
            legacy_cflow_aupro(np.stack(maps), np.stack(masks)), abs=1e-12
        )
    assert result["mean"]["aupro"] == pytest.approx(
        (result["per_category"]["disc"]["aupro"] + result["per_category"]["weave"]["aupro"]) / 2
    )
    printed = capsys.readouterr().out
    assert "disc" in printed and "mean" in printed and "metrics:" in printed


def test_maps_of_another_size_are_resized_and_reported(tmp_path, capsys):
    truth = write_mvtec(tmp_path / "gt", tmp_path / "maps", map_size={"weave": 32})
    evaluate_maps.run(
        parse(
            "--gt-root",
            str(tmp_path / "gt"),
            "--maps",
            str(tmp_path / "maps"),
            "--output",
            "-",
            "--categories",
            "weave",
        )
    )
    printed = capsys.readouterr().out
    assert "resized 6 maps 32x32 -> 16x16 (bilinear)" in printed
    result = json.loads(printed[printed.index("{") :])
    assert result["categories"] == ["weave"] and list(result["per_category"]) == ["weave"]
    assert result["per_category"]["weave"]["pixel_auroc"] > 0.5
    assert len(truth["weave"]["maps"]) == 6


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    write_mvtec(tmp_path / "gt", tmp_path / "maps")
    missing = tmp_path / "maps" / "disc" / "test" / "crack" / "001.npy"
    missing.unlink()
    with pytest.raises(ZsadError, match="no anomaly map for disc/test/crack/001"):
        evaluate_maps.run(parse("--gt-root", str(tmp_path / "gt"), "--maps", str(tmp_path / "maps")))
    code = evaluate_maps.main(["--gt-root", str(tmp_path / "gt"), "--maps", str(tmp_path / "maps")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("evaluate-maps: error: no anomaly map for disc/test/crack/001")
    code = evaluate_maps.main(
        ["--gt-root", str(tmp_path / "maps" / "nothing"), "--maps", str(tmp_path / "maps")]
    )
    assert code == 2 and "is not a directory" in capsys.readouterr().err
    code = evaluate_maps.main(["--gt-root", str(tmp_path), "--maps", str(tmp_path / "maps")])
    assert code == 2 and "does not look like an MVTec AD root" in capsys.readouterr().err
    code = evaluate_maps.main(
        ["--gt-root", str(tmp_path / "gt"), "--maps", str(tmp_path / "maps"), "--categories", "nope"]
    )
    assert code == 2 and "not in --gt-root" in capsys.readouterr().err
    bad = tmp_path / "maps" / "weave" / "test" / "good" / "000.tiff"
    tifffile.imwrite(bad, np.zeros((2, 3, 16, 16), np.float32), photometric="minisblack")
    code = evaluate_maps.main(
        ["--gt-root", str(tmp_path / "gt"), "--maps", str(tmp_path / "maps"), "--categories", "weave"]
    )
    assert code == 2 and "expected (H, W)" in capsys.readouterr().err
    code = evaluate_maps.main(["--maps", str(tmp_path / "maps")])  # maps from elsewhere: no dataset.json
    assert code == 2 and "--gt-root is needed" in capsys.readouterr().err


def test_a_dataset_record_whose_root_is_not_here_asks_for_gt_root(tmp_path, capsys):
    write_mvtec(tmp_path / "gt", tmp_path / "maps")
    record = {"dataset": "mvtec_layout", "root": str(tmp_path / "elsewhere"), "options": {}, "split": "test"}
    (tmp_path / "maps" / "dataset.json").write_text(json.dumps(record))
    assert evaluate_maps.main(["--maps", str(tmp_path / "maps")]) == 2
    assert "is not a directory here: pass --gt-root" in capsys.readouterr().err
    assert evaluate_maps.main(["--maps", str(tmp_path / "maps"), "--gt-root", str(tmp_path / "gt")]) == 0
    (tmp_path / "maps" / "dataset.json").write_text("{not json")
    assert evaluate_maps.main(["--maps", str(tmp_path / "maps"), "--gt-root", str(tmp_path / "gt")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_as_a_module(tmp_path):
    write_mvtec(tmp_path / "gt", tmp_path / "maps")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.evaluate_maps",
            "--gt-root",
            str(tmp_path / "gt"),
            "--maps",
            str(tmp_path / "maps"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "maps" / "metrics.json").read_text())
    assert result["per_category"]["weave"]["aupro_cflow"] is not None
