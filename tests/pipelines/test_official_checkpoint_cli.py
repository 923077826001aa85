"""`zsad test ... checkpoint=<the authors' file>` evaluates a method with its authors' released weights."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import FAST, write_experiment

from lightning_modules.registry import get_method
from pipelines import runner
from pipelines.cli import main
from pipelines.config import compose, to_object
from tests_support import authors_prompt_learner


@pytest.mark.slow
def test_zsad_test_evaluates_the_authors_file(tmp_path, synthetic_pair):
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    cfg = to_object(compose(experiment, FAST))
    module = runner.build_module(cfg, get_method(cfg.method.name))
    torch.save({"prompt_learner": authors_prompt_learner(module)}, tmp_path / "epoch_15.pth")
    args = [
        "test",
        str(experiment),
        *FAST,
        f"checkpoint={tmp_path / 'epoch_15.pth'}",
        f"run_dir={tmp_path / 't'}",
    ]
    assert main(args) == 0
    mean = json.loads((tmp_path / "t" / "results.json").read_text())["targets"]["synthetic"]["mean"]
    assert mean["image_auroc"] is not None and mean["aupro_cflow"] is not None


@pytest.mark.slow
def test_zsad_test_evaluates_the_adaclip_authors_file(tmp_path, synthetic_pair):
    """The file the AdaCLIP authors' AdaCLIP_Trainer.save wrote in the parity run (its entries are in the
    parity fixture), for the parity CLIP's architecture (random weights here; only shapes matter)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import parity_adaclip as pa
    import parity_support as ps

    pa.register_model()
    torch.save(pa.initial_state(ps.load_fixture(pa.FIXTURE)), tmp_path / "pretrained_mvtec_colondb.pth")
    source, target = synthetic_pair
    experiment = write_experiment(tmp_path, source, target)
    args = [
        "test",
        str(experiment),
        *FAST,
        "method=adaclip_tiny",
        f"method.backbone.name={pa.MODEL}",
        "method.k_clusters=2",  # a 2 x 2 patch grid at 32 px
        f"checkpoint={tmp_path / 'pretrained_mvtec_colondb.pth'}",
        f"run_dir={tmp_path / 't'}",
    ]
    assert main(args) == 0
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert (
        results["method"] == "adaclip" and results["targets"]["synthetic"]["mean"]["image_auroc"] is not None
    )
