"""Sweeps without SLURM: expansion, stable ids, local execution, status, resubmission and reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from sweep_helpers import write_sweep

from pipelines import sweep
from pipelines.cli import main
from pipelines.config import config_dir
from pipelines.errors import ConfigError


def test_grid_and_variants_expand_with_stable_ids(tmp_path, synthetic_pair):
    path = write_sweep(
        tmp_path,
        *synthetic_pair,
        seeds=[1, 2],
        extra={"variants": [{"method.lr": 0.001}, {"method.lr": 0.01}]},
    )
    cfg, _ = sweep.load_sweep(path)
    runs = sweep.expand(cfg)
    assert len(runs) == 4 and len({r.id for r in runs}) == 4
    assert any("method.lr=0.01" in r.overrides and "seed=2" in r.overrides for r in runs)
    assert all(r.overrides[-1] == f"run_dir={r.run_dir}" for r in runs)
    # ids depend on a run's settings, not on its position: a larger grid keeps the existing ids
    cfg.grid["seed"] = [0, 1, 2, 3]
    assert {r.id for r in runs} <= {r.id for r in sweep.expand(cfg)}


def test_duplicate_runs_and_missing_experiment_are_errors(tmp_path, synthetic_pair):
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1, 1])
    cfg, _ = sweep.load_sweep(path)
    with pytest.raises(ConfigError, match="duplicate runs"):
        sweep.expand(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {seed: [1]}\n")
    with pytest.raises(ConfigError, match="experiment"):
        sweep.load_sweep(bad)
    bad.write_text("name: x\nexperiment: demo\ngrid: {seed: [1]}\nslurm: {gpu: 1}\n")
    with pytest.raises(ConfigError, match="gpu"):
        sweep.load_sweep(bad)


def test_plan_validates_every_run_config(tmp_path, synthetic_pair, capsys):
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1, 2])
    assert main(["sweep", "plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and "seed=1" in out
    broken = write_sweep(
        tmp_path, *synthetic_pair, seeds=[1], extra={"overrides": ["method.lrr=1"]}, name="broken"
    )
    assert main(["sweep", "submit", "--dry-run", str(broken)]) == 2
    assert "Did you mean" in capsys.readouterr().err


@pytest.mark.slow
def test_local_sweep_runs_records_failures_skips_finished_and_reports(tmp_path, synthetic_pair, capsys):
    source, target = synthetic_pair
    variants = [{"targets.0.root": str(target)}, {"targets.0.root": str(tmp_path / "missing")}]
    path = write_sweep(tmp_path, source, target, seeds=[1, 2], extra={"variants": variants})
    assert main(["sweep", "run", "--local", str(path)]) == 1  # the runs on the missing root fail
    capsys.readouterr()

    cfg, _ = sweep.load_sweep(path)
    rows = {r["id"]: r for r in sweep.status(cfg)}
    states = sorted(r["state"] for r in rows.values())
    assert states == ["failed", "failed", "finished", "finished"]
    failed = [r for r in rows.values() if r["state"] == "failed"]
    assert all("does not exist" in r["error"] for r in failed)
    assert main(["sweep", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 failed, 2 finished" in out and "does not exist" in out

    # finished runs are skipped when the sweep runs again; only the failed ones are retried
    outcome = sweep.run_local(cfg, path)
    assert sorted(outcome.values())[-2:] == ["skipped (finished)", "skipped (finished)"]
    dry = sweep.submit(cfg, path, dry_run=True)
    assert len(dry["to_run"]) == 2 and "--array=" in Path(dry["script"]).read_text()

    assert main(["report", str(path), "--wandb-mode", "disabled"]) == 0
    report_dir = sweep.sweep_dir(cfg)
    markdown = (report_dir / "report.md").read_text()
    assert "| synthetic |" in markdown and "anomalyclip" in markdown
    finished = [
        json.loads((Path(r["run_dir"]) / "results.json").read_text())
        for r in rows.values()
        if r["state"] == "finished"
    ]
    expected = sum(f["targets"]["synthetic"]["mean"]["image_auroc"] for f in finished) / 2
    csv_rows = list(csv.DictReader((report_dir / "report.csv").open()))
    image_auroc = next(r for r in csv_rows if r["dataset"] == "synthetic" and r["metric"] == "image_auroc")
    assert float(image_auroc["mean"]) == pytest.approx(expected)
    assert image_auroc["n"] == "2" and image_auroc["seeds"] == "1 2"  # two seeds averaged


def test_sbatch_script_has_array_signal_requeue_and_ddp_settings(tmp_path, synthetic_pair):
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1, 2, 3, 4])
    cfg, _ = sweep.load_sweep(path)
    cfg.slurm.gpus_per_node, cfg.slurm.nodes, cfg.slurm.max_concurrent = 4, 2, 3
    cfg.slurm.setup = ["module load cuda"]
    script = sweep.render_sbatch(cfg, tmp_path / "manifest.json", [0, 1, 2, 5])
    for line in ("#SBATCH --array=0-2,5%3", "#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "module load cuda"):  # fmt: skip
        assert line in script
    assert "srun " in script and "sweep run-task" in script and '--index "$SLURM_ARRAY_TASK_ID"' in script
    assert (
        "trainer.devices=4" in script and "trainer.num_nodes=2" in script and "trainer.strategy=ddp" in script
    )


def test_study_sweeps_are_valid_files():
    """The shipped studies load and expand (their runs compose once every method is registered)."""
    for path in sorted((config_dir() / "sweep").glob("*.yaml")):
        cfg, _ = sweep.load_sweep(path)
        runs = sweep.expand(cfg)
        assert runs, path
        assert yaml.safe_load(path.read_text())["name"] == cfg.name
