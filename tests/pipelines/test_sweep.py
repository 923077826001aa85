"""Sweeps without SLURM: expansion, stable ids, local execution, status, resubmission and reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from sweep_helpers import write_sweep

from datamodules.errors import ConfigError
from pipelines import sweep
from pipelines.cli import build_parser, main
from pipelines.config import config_dir


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
    assert "2 run(s) have no results.json yet and are left out" in markdown  # the failed ones
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
    # the submitting shell's rendezvous is not the job's (test_multinode runs the collision); setup may set it
    assert "\nunset MASTER_ADDR MASTER_PORT\nmodule load cuda\n" in script
    assert (
        "trainer.devices=4" in script and "trainer.num_nodes=2" in script and "trainer.strategy=ddp" in script
    )
    # on CPU one process per node: Lightning's SLURM detection wants devices = tasks per node
    cfg.slurm.gpus_per_node = 0
    script = sweep.render_sbatch(cfg, tmp_path / "manifest.json", [0])
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n" in script and "--gpus-per-node" not in script
    overrides = "trainer.num_nodes=2 trainer.accelerator=cpu trainer.devices=1 trainer.strategy=ddp --index"
    assert overrides in script
    cfg.slurm.nodes = 1  # one CPU process: the experiment's own trainer settings apply
    assert "sweep run-task" in (script := sweep.render_sbatch(cfg, tmp_path / "manifest.json", [0]))
    assert " trainer.num_nodes=1 --index" in script


def test_study_sweeps_are_valid_files():
    """The shipped studies load and expand (their runs compose once every method is registered); every
    run of the commented example, the file newcomers copy, composes."""
    for path in sorted((config_dir() / "sweep").glob("*.yaml")):
        cfg, _ = sweep.load_sweep(path)
        runs = sweep.expand(cfg)
        assert runs, path
        assert yaml.safe_load(path.read_text())["name"] == cfg.name
    cfg, _ = sweep.load_sweep("example")
    assert sweep.invalid_runs(cfg, sweep.expand(cfg)) == []


# --- what reaches the sbatch script or a shell ---------------------------------------------------------
INJECTIONS = [
    ("partition", "debug\ntouch X; exit 0"),
    ("partition", "gpu debug"),
    ("account", "lab;rm -rf ~"),
    ("mem", "64GB"),
    ("mem", "64G\n#SBATCH --qos=top"),
    ("time", "soon"),
    ("time", "12:00:00\ntouch X"),
    ("time", "1:2:3:4"),
    ("extra_sbatch", ["--qos=high\ntouch X"]),
    ("extra_sbatch", ["--qos high"]),
    ("extra_sbatch", ["-q high"]),
    ("extra_sbatch", ["--comment=$(touch X)"]),
    ("extra_sbatch", ["--array=0-99"]),
    ("extra_sbatch", ["--output=/tmp/x"]),
    ("setup", ["module load cuda\ntouch X"]),
    ("nodes", 0),
    ("cpus_per_task", 0),
    ("max_concurrent", 0),
    ("signal_seconds", 70000),
]


@pytest.mark.parametrize(
    ("key", "value"), INJECTIONS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(INJECTIONS)]
)
def test_slurm_values_outside_slurms_syntax_are_config_errors(tmp_path, synthetic_pair, key, value):
    slurm_block = {"gpus_per_node": 0, key: value}
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1], extra={"slurm": slurm_block})
    with pytest.raises(ConfigError, match=f"slurm.{key}: .*(expected|set by zsad|one shell command)"):
        sweep.load_sweep(path)
    # also when the config is changed after loading: render_sbatch checks again
    cfg, _ = sweep.load_sweep(write_sweep(tmp_path, *synthetic_pair, seeds=[1], name="ok"))
    setattr(cfg.slurm, key, value)
    with pytest.raises(ConfigError, match=f"slurm.{key}"):
        sweep.render_sbatch(cfg, tmp_path / "manifest.json", [0])


def test_valid_slurm_values_render_a_script_that_bash_accepts(tmp_path, synthetic_pair):
    import subprocess

    extra = {"slurm": {"partition": "gpu,debug", "account": "lab-1.x", "mem": "500M", "time": "2-00:30:00",
                       "gpus_per_node": 2, "extra_sbatch": ["--qos=high", "--exclusive", "--gres=gpu:a100:2"],
                       "setup": ["module load cuda/12.4", "export OMP_NUM_THREADS=1"]}}  # fmt: skip
    cfg, _ = sweep.load_sweep(write_sweep(tmp_path, *synthetic_pair, seeds=[1], extra=extra))
    for time in ("30", "30:00", "1-12", "1-12:00", "UNLIMITED"):
        cfg.slurm.time = time
        assert f"#SBATCH --time={time}\n" in sweep.render_sbatch(cfg, tmp_path / "m.json", [0])
    script = tmp_path / "s.sbatch"
    script.write_text(sweep.render_sbatch(cfg, tmp_path / "m.json", [0, 1]))
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu,debug", "#SBATCH --account=lab-1.x", "#SBATCH --mem=500M",
                 "#SBATCH --qos=high", "#SBATCH --exclusive", "#SBATCH --gres=gpu:a100:2",
                 "module load cuda/12.4"):  # fmt: skip
        assert line + "\n" in text


def test_the_script_runs_srun_with_exactly_the_planned_arguments(tmp_path, synthetic_pair):
    """Executed by bash (with a fake srun that records its argv): quoted words stay words, and srun is
    exec'd, i.e. it is the batch step's process and receives the signals sent to it."""
    import subprocess
    import sys

    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "argv.json"
    (fake / "srun").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump([os.getpid(), os.getppid(), sys.argv[1:]], open({str(record)!r}, 'w'))\n"
    )
    (fake / "srun").chmod(0o755)
    cfg, _ = sweep.load_sweep(write_sweep(tmp_path, *synthetic_pair, seeds=[1]))
    manifest = sweep.sweep_dir(cfg) / "m.json"
    command = ["/opt/my python/bin/python", "-m", "pipelines.cli"]  # a space in a path stays one word
    script = tmp_path / "s.sbatch"
    script.write_text(sweep.render_sbatch(cfg, manifest, [0, 3], command=command))
    env = {"PATH": f"{fake}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "3"}
    shell = subprocess.Popen(["bash", str(script)], env=env)
    assert shell.wait(timeout=60) == 0
    pid, _, argv = json.loads(record.read_text())
    assert pid == shell.pid  # exec: srun replaced the batch shell
    task = [str(manifest.resolve()), "trainer.num_nodes=1", "--index", "3"]
    assert argv == [*command, "sweep", "run-task", *task]
    parsed = build_parser().parse_args(argv[len(command) :])  # what zsad makes of it
    assert (parsed.manifest, parsed.index, parsed.overrides) == (task[0], 3, ["trainer.num_nodes=1"])


@pytest.mark.parametrize("output_dir", ["out dir", "out;touch X", "out\nx", "out/%j", "out'x"])
def test_sweep_folders_sbatch_cannot_take_are_errors(tmp_path, synthetic_pair, output_dir):
    cfg, _ = sweep.load_sweep(write_sweep(tmp_path, *synthetic_pair, seeds=[1]))
    cfg.output_dir = str(tmp_path / output_dir)
    with pytest.raises(ConfigError, match="the sweep folder .* cannot be given to sbatch"):
        sweep.render_sbatch(cfg, sweep.sweep_dir(cfg) / "manifest.json", [0])


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "x\ny", ""])
def test_sweep_names_cannot_leave_the_output_directory(tmp_path, synthetic_pair, name):
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1], extra={"name": name})
    with pytest.raises(ConfigError, match="not a valid sweep name"):
        sweep.load_sweep(path)


def test_run_dir_is_set_by_the_sweep_only(tmp_path, synthetic_pair):
    path = write_sweep(
        tmp_path, *synthetic_pair, seeds=[1], extra={"variants": [{"run_dir": "/tmp/elsewhere"}]}
    )
    with pytest.raises(ConfigError, match="sets run_dir itself"):
        sweep.load_sweep(path)


# --- grid values and plan validation -----------------------------------------------------------------
def test_grid_values_may_be_lists_mappings_and_quoted_strings(tmp_path, synthetic_pair):
    from pipelines.config import compose, parse_override

    target = str(tmp_path / "data" / "tgt.yaml")
    grid = {"targets": [[target], [target, target]], "method.backbone": [{"image_size": 32}, {"image_size": 48}],
            "name": ["1", "a: b"]}  # fmt: skip
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1], extra={"grid": grid})
    cfg, _ = sweep.load_sweep(path)
    runs = sweep.expand(cfg)
    assert len(runs) == 8 and sweep.invalid_runs(cfg, runs) == []
    for run in runs:
        composed = compose(run.experiment, sweep._run_overrides(cfg.name, run))
        values = dict(parse_override(o) for o in run.overrides)
        assert len(composed.targets) == len(values["targets"])
        assert composed.method.backbone.image_size == values["method.backbone"]["image_size"]
        assert composed.name == values["name"] and isinstance(composed.name, str)
        assert list(composed.logger.wandb.tags) == run.tags and all(len(t) <= 64 for t in run.tags)
        assert any(t.startswith("targets=") for t in run.tags)
        assert ("name='1'" in run.tags) == (values["name"] == "1")  # the string "1", not the number


def test_sweep_run_names_name_the_protocol_once(tmp_path, synthetic_pair):
    from pipelines.config import compose

    grid = {"seed": [1], "protocol.shots": [0, 2], "method.lr": [0.01]}
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1], extra={"grid": grid})
    cfg, _ = sweep.load_sweep(path)
    names = {
        compose(run.experiment, sweep._run_overrides(cfg.name, run)).logger.wandb.name
        for run in sweep.expand(cfg)
    }
    assert names == {"anomalyclip zero-shot lr=0.01 seed=1", "anomalyclip 2-shot (1 draw) lr=0.01 seed=1"}


def test_plan_reports_every_invalid_run_with_its_id(tmp_path, synthetic_pair, capsys):
    variants = [{"trainer.max_epochs": 2}, {"trainer.max_epoch": 2}]
    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1, 2], extra={"variants": variants})
    cfg, _ = sweep.load_sweep(path)
    bad = [r.id for r in sweep.expand(cfg) if "trainer.max_epoch=2" in r.overrides]
    assert main(["sweep", "plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("invalid:") == 2 and "max_epoch" in captured.out
    assert all(f"{run_id}  " in captured.out for run_id in bad)
    assert "2 of 4 runs are invalid" in captured.err
    assert main(["sweep", "submit", "--dry-run", str(path)]) == 2
    err = capsys.readouterr().err
    assert all(run_id in err for run_id in bad)
    assert not (sweep.sweep_dir(cfg) / "manifest.json").exists()  # nothing written for an invalid sweep


# --- status and duplicate submissions (the scheduler faked) ------------------------------------------
def _fake_queue(monkeypatch, tasks: dict[int, tuple[str, int]], job: str = "77"):
    from pipelines import slurm

    view = {i: slurm.Task(f"{job}_{i}", state, restarts, "") for i, (state, restarts) in tasks.items()}
    monkeypatch.setattr(slurm, "array_tasks", lambda job_id, name=None: view if job_id == job else {})

    def no_sbatch(*args, **kwargs):
        raise AssertionError(f"a unit test must not submit to SLURM: {args}")

    monkeypatch.setattr(sweep.subprocess, "run", no_sbatch)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_combines_the_scheduler_and_the_run_folders(tmp_path, synthetic_pair, monkeypatch):
    import os
    import socket

    path = write_sweep(tmp_path, *synthetic_pair, seeds=list(range(10)))
    cfg, _ = sweep.load_sweep(path)
    runs = sweep.expand(cfg)
    directory = sweep.sweep_dir(cfg)
    (directory / "slurm-logs").mkdir(parents=True)
    submitted = list(range(7))
    (directory / "submissions.json").write_text(json.dumps([{"job_id": "77", "indices": submitted, "ids": [runs[i].id for i in submitted]}]))  # fmt: skip
    _fake_queue(monkeypatch, {0: ("RUNNING", 0), 1: ("PENDING", 1), 2: ("PENDING", 0), 4: ("FAILED", 0)})
    here = socket.gethostname()

    def status_file(i: int, **fields) -> None:
        Path(runs[i].run_dir).mkdir(parents=True, exist_ok=True)
        (Path(runs[i].run_dir) / "status.json").write_text(json.dumps({"host": here, **fields}))

    # 0: SLURM runs it, no status.json yet; 1: requeued and waiting; 2: queued
    status_file(1, state="preempted", slurm_job="77_1")
    status_file(3, state="running", slurm_job="77_3")  # its task is gone: killed
    (directory / "slurm-logs" / "77_4.out").write_text("Traceback (most recent call last):\n  File x\nImportError: no module named foo\n")  # fmt: skip
    status_file(
        5, state="failed", slurm_job="77_5", error="DatasetLayoutError: /x does not exist", error_file="/x"
    )
    status_file(6, state="finished", slurm_job="77_6")
    (Path(runs[6].run_dir) / "results.json").write_text("{}")
    status_file(7, state="running", pid=_dead_pid())  # local run killed with -9
    status_file(8, state="running", pid=os.getpid())  # local run in progress
    rows = sweep.status(cfg)
    states = [r["state"] for r in rows]
    assert states == ["running", "preempted", "queued", "interrupted", "failed", "failed", "finished",
                      "interrupted", "running", "pending"]  # fmt: skip
    assert rows[3]["job"] == "77_3" and "GONE" in rows[3]["error"] and "resumes" in rows[3]["error"]
    assert rows[4]["error"] == "ImportError: no module named foo"
    assert rows[4]["error_file"] == str(directory / "slurm-logs" / "77_4.out")
    assert (rows[5]["error"], rows[5]["error_file"]) == ("DatasetLayoutError: /x does not exist", "/x")
    assert "process is gone" in rows[7]["error"]


def test_a_duplicate_task_refused_by_the_run_lock_is_shown_as_such(tmp_path, synthetic_pair, monkeypatch):
    """Run 0 runs in task 77_0; a second submission's task 78_0 was refused by its run lock and ended
    FAILED: the run is running (77_0), and the duplicate is named as what it was."""
    from pipelines import slurm

    cfg, _ = sweep.load_sweep(write_sweep(tmp_path, *synthetic_pair, seeds=[1]))
    run = sweep.expand(cfg)[0]
    directory = sweep.sweep_dir(cfg)
    (directory / "slurm-logs").mkdir(parents=True)
    entries = [{"job_id": job, "indices": [0], "ids": [run.id]} for job in ("77", "78")]
    (directory / "submissions.json").write_text(json.dumps(entries))
    queue = {"77": {0: slurm.Task("77_0", "RUNNING", 0)}, "78": {0: slurm.Task("78_0", "FAILED", 0)}}
    monkeypatch.setattr(slurm, "array_tasks", lambda job_id, name=None: queue.get(job_id, {}))
    Path(run.run_dir).mkdir(parents=True)
    (Path(run.run_dir) / "status.json").write_text(json.dumps({"state": "running", "slurm_job": "77_0"}))
    (directory / "slurm-logs" / "78_0.out").write_text(
        f"zsad: error: run folder {run.run_dir} is in use by pid 4711 on vm, SLURM job 77_0, since x: wait\n"
    )
    (row,) = sweep.status(cfg)
    assert (row["state"], row["job"]) == ("running", "77_0")
    assert row["error"] == "duplicate task 78_0 refused: the run folder was already in use"


def test_a_sweep_file_is_validated_before_anything_is_written(tmp_path, synthetic_pair, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for output_dir, says in (
        (f"{out}/$(touch {out}/X)", "cannot be given to sbatch"),
        (f"{out}/a\nb", "control characters"),
    ):
        path = write_sweep(tmp_path, *synthetic_pair, seeds=[1], extra={"output_dir": output_dir})
        assert main(["sweep", "submit", str(path), "--dry-run"]) == 2
        assert says in capsys.readouterr().err
    assert list(out.iterdir()) == []  # no manifest, no folder, nothing run


def test_a_second_submit_is_refused_while_runs_are_queued_or_running(
    tmp_path, synthetic_pair, monkeypatch, capsys
):
    import os
    import socket

    path = write_sweep(tmp_path, *synthetic_pair, seeds=[1, 2])
    cfg, _ = sweep.load_sweep(path)
    runs = sweep.expand(cfg)
    directory = sweep.sweep_dir(cfg)
    directory.mkdir(parents=True)
    (directory / "submissions.json").write_text(json.dumps([{"job_id": "77", "indices": [0, 1], "ids": [r.id for r in runs]}]))  # fmt: skip
    _fake_queue(monkeypatch, {0: ("PENDING", 1), 1: ("RUNNING", 0)})
    assert main(["sweep", "submit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "already queued or running" in err and "scancel 77" in err
    assert f"{runs[0].id} (77_0)" in err and f"{runs[1].id} (77_1)" in err
    assert not list(directory.glob("submit-*"))  # nothing rendered
    # a run whose task ended is submitted again, the one still queued is not
    _fake_queue(monkeypatch, {0: ("PENDING", 1), 1: ("FAILED", 0)})
    result = sweep.submit(cfg, path, dry_run=True)
    assert result["to_run"] == [1] and result["busy"] == {runs[0].id: "77_0"}
    assert "#SBATCH --array=1%2" in Path(result["script"]).read_text()
    # a local `zsad sweep run` that owns a run folder counts too
    _fake_queue(monkeypatch, {0: ("PENDING", 1)})
    Path(runs[1].run_dir).mkdir(parents=True)
    (Path(runs[1].run_dir) / "status.json").write_text(json.dumps({"state": "running", "host": socket.gethostname(), "pid": os.getpid()}))  # fmt: skip
    assert main(["sweep", "submit", str(path)]) == 2
    assert f"{runs[1].id} (pid {os.getpid()} on {socket.gethostname()})" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("log", "line"),
    [
        ("Traceback (most recent call last):\n  File x\nzsad: error: no dataset at /x\n", "zsad: error: no dataset at /x"),
        ("start\nslurmstepd: error: *** JOB 5 ON vm CANCELLED AT 2026 DUE TO TIME LIMIT ***\n", "slurmstepd: error: *** JOB 5 ON vm CANCELLED AT 2026 DUE TO TIME LIMIT ***"),
        ("Traceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out of memory\nsrun: error: vm: task 0: Exited with exit code 1\n", "torch.OutOfMemoryError: CUDA out of memory"),
        ("/x/setup.sh: line 3: module: command not found\n\n", "/x/setup.sh: line 3: module: command not found"),
    ],
)  # fmt: skip
def test_the_log_line_that_says_why_a_task_failed(tmp_path, log, line):
    path = tmp_path / "1_0.out"
    path.write_text(log)
    assert sweep.log_summary(path) == line
    assert sweep.log_summary(tmp_path / "missing.out") is None


def test_scontrol_array_task_ids_expand_to_indices():
    from pipelines.slurm import _expand_ids

    assert _expand_ids("0-2,5%2") == [0, 1, 2, 5]
    assert _expand_ids("7") == [7] and _expand_ids("") == []


def test_an_unquoted_slurm_time_is_an_error_not_base_60_minutes(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nexperiment: demo\nslurm:\n  time: 1:30\n")
    with pytest.raises(ConfigError, match=r"slurm.time: 1:30 must be quoted"):
        sweep.load_sweep(path)
    path.write_text("name: s\nexperiment: demo\nslurm:\n  time: '1:30'\n")
    assert sweep.load_sweep(path)[0].slurm.time == "1:30"
