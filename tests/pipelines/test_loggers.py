"""W&B runs that a dashboard can compare, checked by reading the offline run files back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import write_sweep
from wandb_support import offline_run

from pipelines import sweep
from pipelines.config import compose
from pipelines.loggers import label_adhoc_run
from pipelines.results import METRICS


@pytest.mark.slow
def test_sweep_runs_log_per_category_scalars_under_readable_names(tmp_path, synthetic_pair):
    overrides = ["trainer.max_epochs=1", "logger.wandb.mode=offline", "method.backbone.image_size=32"]
    path = write_sweep(
        tmp_path,
        *synthetic_pair,
        seeds=[1],
        extra={"overrides": overrides, "variants": [{"method.gaussian_sigma": 2.0}]},
        name="sigmas",
    )
    cfg, source = sweep.load_sweep(path)
    assert sweep.run_local(cfg, source) == {sweep.expand(cfg)[0].id: "finished"}
    run_dir = Path(sweep.expand(cfg)[0].run_dir)
    results = json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    run = offline_run(wandb_dir)

    assert run["name"] == "anomalyclip zero-shot gaussian_sigma=2.0 seed=1"
    assert run["group"] == "sigmas" and run["job_type"] == "run"
    assert "method.gaussian_sigma=2.0" in run["tags"] and "seed=1" in run["tags"]
    logged = {k: v for row in run["history"] for k, v in row.items()}
    expected = {f"eval/synthetic/{m}": v for m, v in results["mean"].items() if v is not None}
    for category, values in results["categories"].items():
        expected.update(
            {f"eval/synthetic/{category}/{m}": values[m] for m in METRICS if values[m] is not None}
        )
    assert {"eval/synthetic/ring/image_auroc", "eval/synthetic/cells/pixel_auroc"} <= set(expected)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value), key
        assert run["summary"][key] == pytest.approx(value), key


def test_runs_outside_sweeps_are_named_tagged_and_grouped_by_what_differs_from_the_experiment_file():
    overrides = [
        "method=vand_tiny",
        "source=synthetic_source",
        "targets=[synthetic_target]",
        "seed=111",  # the file's own value: not a difference
        "method.lr=0.01",
        "run_dir=/tmp/elsewhere",  # where the files go, not what the run computes
        "logger.wandb.mode=disabled",
        f"checkpoint=/{'long/' * 20}last.ckpt",
    ]
    cfg = compose("vand_visa_to_mvtec", overrides)
    label_adhoc_run(cfg, "vand_visa_to_mvtec", overrides)
    wandb_cfg = cfg.logger.wandb
    assert wandb_cfg.name == "vand synthetic->synthetic zero-shot lr=0.01 seed=111"
    assert wandb_cfg.group == "vand_visa_to_mvtec"
    assert list(wandb_cfg.tags[:4]) == overrides[:3] + ["method.lr=0.01"]
    assert wandb_cfg.tags[4] == "checkpoint=..." + overrides[-1][-50:] and len(wandb_cfg.tags[4]) == 64
    # a name, group or tags the user gives are kept; the file alone: data and seed only
    given = ["logger.wandb.name=mine", "logger.wandb.tags=[a]", "seed=5"]
    cfg = compose("vand_visa_to_mvtec", given)
    label_adhoc_run(cfg, "vand_visa_to_mvtec", given)
    assert (cfg.logger.wandb.name, list(cfg.logger.wandb.tags)) == ("mine", ["a"])
    cfg = compose("vand_mvtec_to_all", [])
    label_adhoc_run(cfg, "vand_mvtec_to_all", [])
    assert (
        cfg.logger.wandb.name == "vand mvtec->16 targets zero-shot seed=111"
        and list(cfg.logger.wandb.tags) == []
    )
    # the protocol is named once, by its label (not as its keys)
    shots = ["protocol.shots=2", "protocol.draws=3"]
    cfg = compose("vand_visa_to_mvtec", shots)
    label_adhoc_run(cfg, "vand_visa_to_mvtec", shots)
    assert cfg.logger.wandb.name == "vand visa->mvtec 2-shot (3 draws) seed=111"
    assert list(cfg.logger.wandb.tags) == shots


def test_extra_columns_are_logged_per_category_where_a_target_has_them():
    from pipelines.loggers import evaluation_scalars

    values = dict.fromkeys(METRICS, 0.5)
    payload = {"mean": {**values, "spro": 0.25}, "categories": {"box_logical": {**values, "spro": 0.25}}}
    scalars = evaluation_scalars("mvtec_loco", payload)
    assert scalars["eval/mvtec_loco/spro"] == scalars["eval/mvtec_loco/box_logical/spro"] == 0.25
    plain = evaluation_scalars("mvtec", {"mean": values, "categories": {"bottle": values}})
    assert not any("spro" in key or "sample_" in key for key in plain)
