"""AnoVL's protocol per dataset: VisA gets the authors' vis_test.py protocol or nothing, unless the user
chooses vl_test.py's (a deviation recorded in results.json); other datasets are unchanged."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from dual_image_support import single_thread  # noqa: F401 - a fixture

from datamodules.errors import ConfigError
from lightning_modules.anovl import AnoVLModule
from lightning_modules.anovl.config import AnoVLConfig
from lightning_modules.dual_image import DualImageModule
from lightning_modules.dual_image.config import DualImageConfig
from pipelines import runner
from pipelines.config import compose, to_object

VL_TEST_ON_VISA = {"protocol": "vl_test", "authors_protocol": "vis_test", "deviation": True}


def write_visa_layout(mvtec_root: Path, out: Path) -> Path:
    """The test images of an MVTec-layout dataset in VisA's raw layout (split_csv/1cls.csv)."""
    rows = []
    for category in sorted(p.name for p in mvtec_root.iterdir() if p.is_dir()):
        for image in sorted((mvtec_root / category / "test").glob("*/*.png")):
            defect = image.parent.name
            label = "normal" if defect == "good" else "anomaly"
            folder = "Normal" if defect == "good" else "Anomaly"
            relative = Path(category) / "Data" / "Images" / folder / f"{defect}_{image.name}"
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, out / relative)
            mask = ""
            if label == "anomaly":
                mask_path = Path(category) / "Data" / "Masks" / "Anomaly" / f"{defect}_{image.name}"
                (out / mask_path).parent.mkdir(parents=True, exist_ok=True)
                source = mvtec_root / category / "ground_truth" / defect / f"{image.stem}_mask.png"
                shutil.copy(source, out / mask_path)
                mask = str(mask_path)
            rows.append([category, "test", label, str(relative), mask])
    (out / "split_csv").mkdir(parents=True)
    with (out / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return out


def experiment(method: str, targets: str, run_dir: Path, *extra: str):
    return to_object(
        compose(
            "anovl_mvtec",
            [
                f"method={method}",
                f"targets={targets}",
                "logger.wandb.mode=disabled",
                "trainer.accelerator=cpu",
                "trainer.devices=1",
                "trainer.enable_progress_bar=false",
                "eval.visualize=false",
                f"run_dir={run_dir}",
                *extra,
            ],
        )
    )


def test_visa_is_refused_with_the_authors_protocol_and_the_way_out():
    with pytest.raises(ConfigError) as refused:
        AnoVLModule.protocol_on(AnoVLConfig(), "visa")
    message = str(refused.value)
    assert "vis_test.py" in message and "two overlapping square tiles" in message
    assert "does not implement" in message and "method.visa_protocol=vl_test" in message


def test_the_chosen_deviation_and_the_other_datasets_are_recorded():
    assert AnoVLModule.protocol_on(AnoVLConfig(visa_protocol="vl_test"), "visa") == VL_TEST_ON_VISA
    mvtec = {"protocol": "vl_test", "authors_protocol": "vl_test", "deviation": False}
    for cfg in (AnoVLConfig(), AnoVLConfig(visa_protocol="vl_test")):
        assert AnoVLModule.protocol_on(cfg, "mvtec") == mvtec
        assert AnoVLModule.protocol_on(cfg, "btad") == {"protocol": "vl_test", "authors_protocol": None}
    with pytest.raises(ConfigError, match="visa_protocol must be one of"):
        AnoVLModule.protocol_on(AnoVLConfig(visa_protocol="tiles"), "mvtec")


def test_dual_image_runs_vl_test_everywhere_as_a_reconstruction():
    reconstruction = {"protocol": "vl_test", "authors_protocol": None, "reconstruction": True}
    for dataset in ("visa", "mvtec"):
        assert DualImageModule.protocol_on(DualImageConfig(), dataset) == reconstruction
    with pytest.raises(ConfigError, match="dual_image on visa.*does not implement"):
        DualImageModule.protocol_on(DualImageConfig(visa_protocol="vis_test"), "visa")


@pytest.mark.parametrize("job", [runner.test, runner.run])
def test_a_run_on_visa_stops_before_any_model_data_or_run_folder(job, tmp_path):
    """The root does not even exist: the protocol is refused before the dataset is read."""
    cfg = experiment("anovl_tiny", "[visa]", tmp_path / "run", f"targets.0.root={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match="vis_test.py"):
        job(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("single_thread")
def test_vl_test_on_visa_is_evaluated_and_recorded_as_a_deviation(synthetic_pair, tmp_path):
    visa = write_visa_layout(synthetic_pair[1], tmp_path / "visa")
    target = tmp_path / "synthetic.yaml"
    target.write_text(f"name: synthetic\nroot: {synthetic_pair[1]}\nnum_workers: 0\n")
    cfg = experiment(
        "anovl_tiny",
        f"[visa,{target}]",
        tmp_path / "run",
        f"targets.0.root={visa}",
        "targets.0.num_workers=0",
        "method.visa_protocol=vl_test",
    )
    runner.test(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())["targets"]
    assert results["visa"]["method_protocol"] == VL_TEST_ON_VISA
    assert results["synthetic"]["method_protocol"] == {"protocol": "vl_test", "authors_protocol": None}
    assert results["visa"]["mean"]["image_auroc"] is not None
