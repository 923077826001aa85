"""AnoVL's protocol per dataset (its spec's ``dataset_protocol``): VisA gets the authors' vis_test.py protocol
unless the user chooses vl_test.py's (a deviation recorded in results.json); other datasets are unchanged; a
protocol a method does not implement (Dual-Image: vis_test), or a sequential TTA split over processes, is
refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dual_image_support import single_thread  # noqa: F401 - a fixture

from datamodules.errors import ConfigError
from datamodules.synthetic import write_visa_layout
from lightning_modules.anovl.config import AnoVLConfig
from lightning_modules.dual_image.config import DualImageConfig
from lightning_modules.registry import get_method
from pipelines import runner
from pipelines.config import compose, to_object

ANOVL, DUAL_IMAGE = get_method("anovl"), get_method("dual_image")
VL_TEST_ON_VISA = {"protocol": "vl_test", "authors_protocol": "vis_test", "deviation": True}


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


def test_visa_gets_the_authors_vis_test_protocol_by_default():
    vis_test = {"protocol": "vis_test", "authors_protocol": "vis_test", "deviation": False}
    assert ANOVL.protocol_on(AnoVLConfig(), "visa") == vis_test


def test_the_chosen_deviation_and_the_other_datasets_are_recorded():
    assert ANOVL.protocol_on(AnoVLConfig(visa_protocol="vl_test"), "visa") == VL_TEST_ON_VISA
    mvtec = {"protocol": "vl_test", "authors_protocol": "vl_test", "deviation": False}
    for cfg in (AnoVLConfig(), AnoVLConfig(visa_protocol="vl_test")):
        assert ANOVL.protocol_on(cfg, "mvtec") == mvtec
        assert ANOVL.protocol_on(cfg, "btad") == {"protocol": "vl_test", "authors_protocol": None}
    with pytest.raises(ConfigError, match="visa_protocol must be one of"):
        ANOVL.protocol_on(AnoVLConfig(visa_protocol="tiles"), "mvtec")


def test_dual_image_runs_vl_test_everywhere_as_a_reconstruction():
    reconstruction = {"protocol": "vl_test", "authors_protocol": None, "reconstruction": True}
    for dataset in ("visa", "mvtec"):
        assert DUAL_IMAGE.protocol_on(DualImageConfig(), dataset) == reconstruction
    with pytest.raises(ConfigError) as refused:
        DUAL_IMAGE.protocol_on(DualImageConfig(visa_protocol="vis_test"), "visa")
    message = str(refused.value)
    assert "vis_test.py" in message and "two overlapping square tiles" in message
    assert "does not implement" in message and "method.visa_protocol=vl_test" in message


@pytest.mark.parametrize("job", [runner.test, runner.run])
def test_a_run_on_visa_stops_before_any_model_data_or_run_folder(job, tmp_path):
    """The root does not even exist: the protocol is refused before the dataset is read."""
    root = f"targets.0.root={tmp_path / 'none'}"
    cfg = experiment("dual_image_tiny", "[visa]", tmp_path / "run", root, "method.visa_protocol=vis_test")
    with pytest.raises(ConfigError, match="vis_test.py"):
        job(cfg)
    assert not (tmp_path / "run").exists()


def test_the_protocol_decides_the_preprocessing():
    vis_test = ANOVL.preprocessing(AnoVLConfig(), "visa")
    assert (vis_test.resize, vis_test.interpolation) == ("short_side", "bilinear")
    for dataset in ("mvtec", None):  # None: images of no benchmark (zsad predict)
        assert ANOVL.preprocessing(AnoVLConfig(), dataset).resize == "square"
    assert ANOVL.preprocessing(AnoVLConfig(visa_protocol="vl_test"), "visa").resize == "square"
    assert DUAL_IMAGE.preprocessing(DualImageConfig(), "visa").resize == "square"


@pytest.mark.parametrize("job", [runner.test, runner.run])
def test_a_sequential_tta_over_two_processes_stops_before_any_model_data_or_run_folder(job, tmp_path):
    """The authors' TTA adapts the images of a category one after another: split over processes, the scores
    would depend on the world size (the spec's ``ddp_refusal``)."""
    root = f"targets.0.root={tmp_path / 'none'}"
    cfg = experiment("anovl_tiny", "[visa]", tmp_path / "run", root, "trainer.devices=2")
    assert cfg.method.tta.reset == "image_keep_optimizer"
    with pytest.raises(ConfigError, match=r"tta\.reset=image_keep_optimizer.*reset=image.*has 2 processes"):
        job(cfg)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def visa_and_synthetic(synthetic_pair, tmp_path) -> tuple[str, str]:
    """``targets=`` and the VisA root override for a VisA-layout copy of the synthetic target and itself."""
    visa = write_visa_layout(synthetic_pair[1], tmp_path / "visa", size=(40, 30))
    target = tmp_path / "synthetic.yaml"
    target.write_text(f"name: synthetic\nroot: {synthetic_pair[1]}\nnum_workers: 0\n")
    return f"[visa,{target}]", f"targets.0.root={visa}"


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize(
    ("visa_protocol", "recorded"),
    [
        ("vis_test", {"protocol": "vis_test", "authors_protocol": "vis_test", "deviation": False}),
        ("vl_test", VL_TEST_ON_VISA),
    ],
)
def test_visa_is_evaluated_under_the_chosen_protocol_and_recorded(
    visa_protocol, recorded, visa_and_synthetic, tmp_path
):
    targets, visa_root = visa_and_synthetic
    overrides = (visa_root, "targets.0.num_workers=0", f"method.visa_protocol={visa_protocol}")
    runner.test(experiment("anovl_tiny", targets, tmp_path / "run", *overrides))
    results = json.loads((tmp_path / "run" / "results.json").read_text())["targets"]
    assert results["visa"]["method_protocol"] == recorded
    assert results["synthetic"]["method_protocol"] == {"protocol": "vl_test", "authors_protocol": None}
    assert results["visa"]["mean"]["image_auroc"] is not None
    assert results["visa"]["mean"]["pixel_auroc"] is not None
    resize = "short_side" if visa_protocol == "vis_test" else "square"
    assert results["visa"]["preprocessing"]["resize"] == resize
    assert results["synthetic"]["preprocessing"]["resize"] == "square"
