"""Config visibility: `zsad config show` prints what a run would use, `zsad experiments` lists the files."""

from __future__ import annotations

import yaml

from pipelines.cli import main
from pipelines.config import config_dir, experiment_summaries


def test_config_show_prints_the_composed_resolved_config(capsys, monkeypatch):
    monkeypatch.setenv("ZSAD_DATA_ROOT", "/somewhere")
    assert main(["config", "show", "demo", "method.lr=0.01", "output_dir=/out", "trainer.max_epochs=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["method"]["name"] == "anomalyclip" and shown["method"]["lr"] == 0.01
    assert shown["trainer"]["max_epochs"] == 2
    assert shown["source"]["root"] == "/out/synthetic/industrial"  # interpolations resolved
    assert shown["data_root"] == "/somewhere" and shown["description"].startswith("The README's demo")
    assert main(["config", "show", "demo", "method.lrr=1"]) == 2
    assert "lrr" in capsys.readouterr().err


def test_every_experiment_file_has_a_one_line_description(capsys):
    names = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
    summaries = dict(experiment_summaries())
    assert sorted(summaries) == names
    assert [n for n, d in summaries.items() if not d] == [], "experiment files without a description"
    assert main(["experiments"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(names) and all(line.split()[0] in names for line in out)
    assert "(no description)" not in "\n".join(out)
