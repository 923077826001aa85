"""Reports: grouping by the full resolved config, mean ± std over seeds only, reruns counted once,
warnings for mixed cells, --group-by, the published reference column and the files written."""

from __future__ import annotations

import base64
import copy
import csv
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamodules.errors import ConfigError, ZsadError
from lightning_modules.registry import get_method
from pipelines.cli import main
from pipelines.config import compose, to_yaml
from pipelines.report import build_report

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cf"
    "c0f01f0005000201aa4ab0f70000000049454e44ae426082"
)


@functools.cache
def demo_config() -> dict:
    """The demo experiment's resolved config as a run writes it to config.yaml (composed once)."""
    return yaml.safe_load(to_yaml(compose("demo", ["method=anomalyclip"])))


def make_run(
    base: Path,
    folder: str,
    overrides: list[str],
    image_auroc: float,
    created: str = "2026-01-01T00:00:00+00:00",
    n_images: int = 20,
    aupro_cflow: float | None = None,
    with_config: bool = True,
) -> Path:
    """A finished run folder: the demo experiment's resolved config.yaml with ``overrides`` (dotted
    key=value, values as YAML) and a results.json."""
    run_dir = base / folder
    run_dir.mkdir(parents=True)
    cfg = copy.deepcopy(demo_config())
    for key, value in (o.split("=", 1) for o in [f"run_dir={run_dir}", *overrides]):
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = yaml.safe_load(value)
    if with_config:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    mean = {"image_auroc": image_auroc, "image_ap": image_auroc / 2, "pixel_auroc": 0.5, "aupro": 0.25}
    if aupro_cflow is not None:
        mean["aupro_cflow"] = aupro_cflow
    results = {
        "experiment": "demo", "method": "anomalyclip", "source": "synthetic", "seed": cfg["seed"],
        "run_dir": str(run_dir), "created": created, "eval": {"fpr_limit": 0.3, "aupro_method": "exact"},
        "targets": {"synthetic": {"dataset": "synthetic", "n_images": n_images, "version": None, "mean": mean}},
    }  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def test_a_cell_of_runs_that_saw_other_files_is_warned(tmp_path):
    """Same setting, other seeds, but other files behind the same dataset name (a regenerated or edited
    copy): the report says so; copies whose digests are of sizes and times only are not compared."""
    runs = tmp_path / "runs"

    def fingerprint(run_dir: Path, **fields) -> None:
        results = json.loads((run_dir / "results.json").read_text())
        base = {
            "root": "/data",
            "content": "sha256 of every file",
            "n_files": 20,
            "bytes": 1000,
            "digest": "a" * 64,
        }
        results["targets"]["synthetic"]["data_fingerprint"] = base | fields
        (run_dir / "results.json").write_text(json.dumps(results))

    def report():  # into the test's folder, not the working directory's report/
        return build_report([str(runs)], out=str(tmp_path / "report"), wandb_mode="disabled")

    fingerprint(make_run(runs, "s1", ["seed=1"], 0.8))
    fingerprint(make_run(runs, "s2", ["seed=2"], 0.7), root="/elsewhere")  # same files elsewhere: fine
    assert not any("data_fingerprint" in w for w in report().warnings)
    fingerprint(make_run(runs, "s3", ["seed=3"], 0.6), digest="b" * 64)  # same counts, other content
    warnings = report().warnings
    assert any("files differ in content" in w and "aaaaaaaaaaaa, bbbbbbbbbbbb" in w for w in warnings)
    fingerprint(runs / "s3", digest="b" * 64, content="every file by size and time")  # copies: not compared
    assert not any("data_fingerprint" in w for w in report().warnings)
    fingerprint(runs / "s3", bytes=999, content="every file by size and time")
    warnings = report().warnings
    assert any("mixes different data: data_fingerprint bytes = 1000, 999" in w for w in warnings)


def csv_rows(report) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(report.csv_text)))


def row(rows, setting: str, metric: str) -> dict[str, str]:
    return next(r for r in rows if r["setting"] == setting and r["metric"] == metric)


@pytest.fixture()
def sigma_sweep(tmp_path) -> tuple[Path, dict[tuple[float, int], float]]:
    """gaussian_sigma [0.0, 2.0] x seeds [1, 2], one identical rerun and one run that differs only in
    keys that do not change results (paths, logging, workers)."""
    runs = tmp_path / "runs"
    values = {(0.0, 1): 0.40, (0.0, 2): 0.50, (2.0, 1): 0.70, (2.0, 2): 0.90}
    for (sigma, seed), value in values.items():
        make_run(runs, f"s{sigma}_{seed}", [f"method.gaussian_sigma={sigma}", f"seed={seed}"], value)
    # the same setting and seed again, newer: counted once, with the newest numbers
    make_run(
        runs,
        "s0.0_1_rerun",
        ["method.gaussian_sigma=0.0", "seed=1"],
        0.44,
        created="2026-02-01T00:00:00+00:00",
    )
    values[(0.0, 1)] = 0.44
    ignored = ["logger.wandb.mode=disabled", "targets.0.num_workers=3", "trainer.enable_progress_bar=false"]
    make_run(runs, "s0.0_3_elsewhere", ["method.gaussian_sigma=0.0", "seed=3", *ignored], 0.60)
    values[(0.0, 3)] = 0.60
    return runs, values


def test_settings_become_columns_and_only_seeds_are_averaged(tmp_path, sigma_sweep):
    runs, values = sigma_sweep
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    rows = csv_rows(report)
    for sigma in (0.0, 2.0):
        numbers = np.array([v for (s, _), v in values.items() if s == sigma])
        found = row(rows, f"anomalyclip gaussian_sigma={sigma}", "image_auroc")
        assert float(found["mean"]) == pytest.approx(numbers.mean())
        assert float(found["std"]) == pytest.approx(numbers.std(ddof=1))
        assert int(found["n"]) == len(numbers)
    assert row(rows, "anomalyclip gaussian_sigma=0.0", "image_auroc")["seeds"] == "1 2 3"
    assert f"| synthetic | {100 * np.mean([0.44, 0.5, 0.6]):.1f}±" in report.markdown
    assert "(n=3)" in report.markdown and "(n=2)" in report.markdown
    assert report.warnings == []  # the cells differ only in their seeds
    notes = report.markdown.split("## Notes")[1]
    assert "2 identical runs with seed 1 counted once" in notes and "s0.0_1_rerun" in notes
    assert report.n_runs == 6


def test_seeds_that_change_nothing_are_one_measurement(tmp_path):
    """A training-free setting run under three seeds gives the same numbers three times: one measurement
    (n=1, no spread), said in a note; a seed whose numbers differ in one category is a replicate."""
    runs = tmp_path / "runs"

    def with_categories(run_dir: Path, bottle: float) -> None:
        results = json.loads((run_dir / "results.json").read_text())
        categories = {"bottle": {"image_auroc": bottle}, "cable": {"image_auroc": 0.5}}
        results["targets"]["synthetic"]["categories"] = categories
        (run_dir / "results.json").write_text(json.dumps(results))

    for seed in (1, 2, 3):
        with_categories(make_run(runs, f"s{seed}", [f"seed={seed}"], 0.7), bottle=0.9)
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    found = row(csv_rows(report), "anomalyclip", "image_auroc")
    assert (int(found["n"]), found["seeds"]) == (1, "1")
    assert "seeds 1, 2, 3 have identical results in every category" in report.markdown.split("## Notes")[1]

    with_categories(runs / "s3", bottle=0.8)  # same mean row, another category number: its own draw
    found = row(csv_rows(build_report([str(runs)], out=str(tmp_path / "rep2"), wandb_mode="disabled")),
                "anomalyclip", "image_auroc")  # fmt: skip
    assert (int(found["n"]), found["seeds"]) == (2, "1 3")


def test_group_by_merges_settings_and_warns_what_a_cell_mixes(tmp_path, sigma_sweep):
    runs, values = sigma_sweep
    report = build_report(
        [str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled", group_by=["method.name"]
    )
    found = row(csv_rows(report), "anomalyclip", "image_auroc")
    assert float(found["mean"]) == pytest.approx(np.mean(list(values.values())))
    assert int(found["n"]) == 5
    assert any(
        "mixes settings, not only seeds: method.gaussian_sigma: 0.0, 2.0" in w for w in report.warnings
    )
    assert any("same seed more than once" in w for w in report.warnings)
    assert "## Warnings" in report.markdown
    with pytest.raises(ConfigError, match="did you mean 'method.gaussian_sigma'"):
        build_report(
            [str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled", group_by=["method.gausian_sigma"]
        )


def test_baseline_follows_each_number_with_its_difference(tmp_path, sigma_sweep):
    """What the CMG ablation table gave: every setting against a baseline (a run folder or an experiment)."""
    runs, _ = sigma_sweep
    report = build_report(
        [str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled", baseline=str(runs / "s0.0_1")
    )
    sharp, smooth = np.mean([0.44, 0.5, 0.6]), np.mean([0.7, 0.9])
    line = next(r for r in report.markdown.splitlines() if r.startswith("| synthetic | "))
    sharp_cell, smooth_cell = line.split(" | ")[1:3]  # columns in label order: sigma 0.0, then 2.0
    assert sharp_cell.startswith(f"{100 * sharp:.1f}±") and "(+" not in sharp_cell and "(-" not in sharp_cell
    assert smooth_cell.startswith(f"{100 * smooth:.1f}±")
    assert f"({100 * (smooth - sharp):+.1f})" in smooth_cell.split(",")[0]
    assert "baseline setting `anomalyclip gaussian_sigma=0.0`" in report.markdown
    with pytest.raises(ZsadError, match="--baseline demo: settings .* match"):  # both settings ran "demo"
        build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled", baseline="demo")


def test_schedules_and_data_never_mix_silently(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "long", ["trainer.max_epochs=15"], 0.8)
    make_run(runs, "short", ["trainer.max_epochs=1"], 0.6)
    make_run(runs, "short_other_data", ["trainer.max_epochs=1", "seed=2"], 0.7, n_images=30)
    make_run(runs, "no_config", ["seed=5"], 0.1, with_config=False)
    (runs / "long" / "status.json").write_text(json.dumps({"state": "failed", "error": "on the 2nd target"}))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    rows = csv_rows(report)
    assert float(row(rows, "anomalyclip max_epochs=15", "image_auroc")["mean"]) == pytest.approx(0.8)
    assert int(row(rows, "anomalyclip max_epochs=1", "image_auroc")["n"]) == 2
    assert any("mixes different data: n_images = 20, 30" in w for w in report.warnings)
    assert any("no config.yaml" in w and "no_config" in w for w in report.warnings)
    assert any(
        w.endswith("long is failed: its results.json holds only the targets evaluated so far")
        for w in report.warnings
    )


def test_test_runs_of_different_checkpoints_are_different_replicates(tmp_path):
    runs = tmp_path / "runs"
    for name, value in (("trainA", 0.6), ("trainB", 0.8)):
        make_run(runs, f"test_{name}", [f"checkpoint=/r/{name}/checkpoints/last.ckpt"], value)
    make_run(runs, "test_trainB_again", ["checkpoint=/r/trainB/checkpoints/last.ckpt"], 0.9, created="2027")
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    found = row(csv_rows(report), "anomalyclip", "image_auroc")
    assert int(found["n"]) == 2 and float(found["mean"]) == pytest.approx(np.mean([0.6, 0.9]))
    assert found["seeds"] == "111@trainA 111@trainB" and report.warnings == []
    assert "2 identical runs with seed 111@trainB counted once" in report.markdown


def test_test_runs_of_checkpoints_trained_differently_are_other_settings(tmp_path):
    """One test config, checkpoints of two trainings that differ in lr: two columns, not two replicates of
    one; checkpoints of the same training setting (other seeds) stay replicates."""
    runs = tmp_path / "runs"
    trained = {
        "trainA": {"method": {"lr": 0.001}, "trainer": {"max_epochs": 2}},
        "trainB": {"method": {"lr": 0.001}, "trainer": {"max_epochs": 2}},
        "trainC": {"method": {"lr": 0.01}, "trainer": {"max_epochs": 2}},
    }
    for name, value in (("trainA", 0.6), ("trainB", 0.8), ("trainC", 0.9)):
        run = make_run(runs, f"test_{name}", [f"checkpoint=/r/{name}/checkpoints/last.ckpt"], value)
        results = json.loads((run / "results.json").read_text())
        (run / "results.json").write_text(json.dumps({**results, "trained_setting": trained[name]}))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    rows = {r["setting"]: r for r in csv_rows(report) if r["metric"] == "image_auroc"}
    assert set(rows) == {"anomalyclip trained.method.lr=0.001", "anomalyclip trained.method.lr=0.01"}
    same = rows["anomalyclip trained.method.lr=0.001"]
    assert int(same["n"]) == 2 and float(same["mean"]) == pytest.approx(0.7)
    assert int(rows["anomalyclip trained.method.lr=0.01"]["n"]) == 1


def test_reference_compares_the_cflow_aupro_or_says_it_cannot(tmp_path):
    exact_only = tmp_path / "exact"
    make_run(exact_only, "r", ["method.gaussian_sigma=0.0"], 0.9)
    report = build_report([str(exact_only)], out=str(tmp_path / "a"), reference=True, wandb_mode="disabled")
    # synthetic has no published numbers; the note is there whenever the reference is asked for
    assert "NOT comparable" in report.markdown
    assert row(csv_rows(report), "anomalyclip", "aupro")["published"] == ""

    with_cflow = tmp_path / "cflow"
    run = make_run(with_cflow, "r", [], 0.9, aupro_cflow=0.8)
    results = json.loads((run / "results.json").read_text())
    results["targets"] = {"mvtec": {**results["targets"]["synthetic"], "dataset": "mvtec"}}
    results["source"] = "visa"  # the paper's training direction for MVTec AD
    (run / "results.json").write_text(json.dumps(results))
    report = build_report([str(with_cflow)], out=str(tmp_path / "b"), reference=True, wandb_mode="disabled")
    assert "## pixel level (AUROC, AUPRO cflow-style)" in report.markdown
    assert "| mvtec | 50.0, 80.0 (n=1) |" in report.markdown
    assert "| mvtec (published) | 91.1, 81.4 |" in report.markdown  # AnomalyCLIP, Table 2
    assert "| mvtec (published) | 91.5, 96.2 |" in report.markdown
    cflow = row(csv_rows(report), "anomalyclip", "aupro_cflow")
    assert float(cflow["published"]) == pytest.approx(0.814) and float(cflow["mean"]) == pytest.approx(0.8)
    assert get_method("vand").published.results["isic"] == {"pixel_auroc": 0.894, "aupro": 0.772}


def test_latex_gives_no_difference_between_the_exact_aupro_and_the_published_cflow_one(tmp_path):
    """Runs without `aupro_cflow`: the AUPRO column is zsad's exact AUPRO, the published one the cflow-style
    (markdown marks it '*' and says NOT comparable, the CSV leaves it empty); LaTeX must not print their
    difference as "difference from the published number". The AUROC beside it keeps its difference."""
    runs = tmp_path / "runs"
    run = make_run(runs, "r", [], 0.9)
    results = json.loads((run / "results.json").read_text())
    results["targets"] = {"mvtec": {**results["targets"]["synthetic"], "dataset": "mvtec"}}
    results["source"] = "visa"  # the paper's training direction for MVTec AD
    (run / "results.json").write_text(json.dumps(results))
    out = tmp_path / "rep"
    args = ["report", str(runs), "--out", str(out), "--latex", "--reference", "--wandb-mode", "disabled"]
    assert main(args) == 0
    assert "| mvtec (published) | 91.1, 81.4* |" in (out / "report.md").read_text()  # AnomalyCLIP, Table 2
    pixel = [line for line in (out / "report.tex").read_text().splitlines() if line.startswith("mvtec & ")][1]
    # pixel AUROC 50.0 - 91.1 published; AUPRO 25.0 exact against 81.4 cflow-style: no difference
    assert pixel == r"mvtec & 50.0\,{\scriptsize ($-$41.1)} / 25.0 \\"


def test_a_column_mixing_methods_or_shots_gets_no_published_numbers(tmp_path):
    """--group-by can put runs of two methods, or a zero-shot and a 1-shot run, in one column: no single
    setting's published numbers belong beside it (they were those of whichever run came last)."""

    def report(runs: Path, group_by: list[str]):
        out = tmp_path / f"rep-{runs.name}"
        built = build_report(
            [str(runs)], out=str(out), reference=True, wandb_mode="disabled", group_by=group_by
        )
        return {r["metric"]: r["published"] for r in csv_rows(built)}, built.markdown

    def mvtec_run(runs: Path, folder: str, overrides: list[str]) -> None:
        run = make_run(runs, folder, overrides, 0.9)
        results = json.loads((run / "results.json").read_text())
        results["targets"] = {"mvtec": {**results["targets"]["synthetic"], "dataset": "mvtec"}}
        results["source"] = "visa"  # the paper's training direction for MVTec AD
        (run / "results.json").write_text(json.dumps(results))

    methods = tmp_path / "methods"
    mvtec_run(methods, "a", ["seed=1"])
    published, _ = report(methods, ["method.gaussian_sigma"])
    assert float(published["image_auroc"]) == pytest.approx(0.915)  # one method: AnomalyCLIP's numbers
    mvtec_run(methods, "b", ["seed=2", "method.name=vand"])
    published, markdown = report(methods, ["method.gaussian_sigma"])
    assert published["image_auroc"] == "" and "| mvtec (published) | -, - |" in markdown

    shots = tmp_path / "shots"
    adaptclip = "method=" + json.dumps(yaml.safe_load(to_yaml(compose("adaptclip_mvtec_to_all")))["method"])
    mvtec_run(shots, "a", ["seed=1", adaptclip])
    mvtec_run(shots, "b", ["seed=2", adaptclip, "protocol.shots=1"])
    published, markdown = report(shots, ["method.name"])
    assert published["image_auroc"] == "" and "| mvtec (published) | -, - |" in markdown
    rows = [r for r in csv_rows(build_report([str(shots)], out=str(tmp_path / "apart"), reference=True,
                                              wandb_mode="disabled")) if r["metric"] == "image_auroc"]  # fmt: skip
    assert sorted(float(r["published"]) for r in rows) == pytest.approx([0.935, 0.942])


def test_layouts_choose_the_tables_metrics_in_the_papers_order(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs, "r", [], 0.9, aupro_cflow=0.8)
    results = json.loads((run / "results.json").read_text())
    target = results["targets"]["synthetic"]
    target["mean"].update(pixel_ap=0.3, pixel_aupr=0.35, image_f1_max=0.7)
    results["targets"] = {"mvtec": {**target, "dataset": "mvtec"}}
    results["source"] = "visa"  # the paper's training direction for MVTec AD
    (run / "results.json").write_text(json.dumps(results))

    def report(layout, reference=False):
        out = tmp_path / f"{layout}-{reference}"
        return build_report(
            [str(runs)], out=str(out), reference=reference, wandb_mode="disabled", layout=layout
        )

    adapt = report("adaptclip")
    assert "## image level (AUROC)" in adapt.markdown and "| mvtec | 90.0 (n=1) |" in adapt.markdown
    assert (
        "## pixel level (AUPR, AUROC)" in adapt.markdown and "| mvtec | 35.0, 50.0 (n=1) |" in adapt.markdown
    )
    assert "AUPRO" not in adapt.markdown.split("## pixel level")[1].split("##")[0]
    full = report("full", reference=True)  # the papers' cflow AUPRO replaces the exact one under --reference
    assert (
        "## image level (AUROC, AP, F1-max)" in full.markdown
        and "| mvtec | 90.0, 45.0, 70.0 (n=1) |" in full.markdown
    )
    assert "## pixel level (AUROC, AP, AUPR, AUPRO cflow-style)" in full.markdown
    assert "| mvtec | 50.0, 30.0, 35.0, 80.0 (n=1) |" in full.markdown
    assert "| mvtec (published) | 91.1, -, -, 81.4 |" in full.markdown  # AnomalyCLIP's paper: no pixel AP
    assert "## image level (AUROC, AP)" in report("anomalyclip").markdown
    with pytest.raises(ZsadError, match="unknown report layout 'paper'; known: anomalyclip, adaptclip, full"):
        report("paper")


def test_the_cli_offers_every_layout(capsys):
    from pipelines.cli import build_parser
    from pipelines.report_tables import LAYOUTS

    parser = build_parser(["report"])
    assert parser.parse_args(["report", "runs"]).layout == "anomalyclip"
    assert [parser.parse_args(["report", "runs", "--layout", name]).layout for name in LAYOUTS] == list(
        LAYOUTS
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["report", "runs", "--layout", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err


def test_cli_writes_markdown_csv_and_a_self_contained_html_page(tmp_path, sigma_sweep, capsys, monkeypatch):
    from pipelines import report_curves

    runs, _ = sigma_sweep
    replicates = ("s0.0_1_rerun", "s0.0_2", "s0.0_3_elsewhere", "s2.0_1", "s2.0_2")  # the runs counted
    for k, folder in enumerate(replicates):
        results = json.loads((runs / folder / "results.json").read_text())
        target = results["targets"]["synthetic"]
        target["categories"] = {"ring": target["mean"]}
        (runs / folder / "results.json").write_text(json.dumps(results))
        plots = runs / folder / "plots" / "synthetic" / "ring"
        plots.mkdir(parents=True)
        (plots / "roc.csv").write_text(
            f"level,fpr,tpr\nimage,0,0\nimage,0,{k / 10}\nimage,0.5,1\nimage,1,1\npixel,0,0\npixel,1,1\n"
        )
        (plots / "pro.csv").write_text("fpr,pro\n0,0\n0.3,0.6\n")
        (plots / "curves.png").write_bytes(PNG_1x1)
        (plots / "gallery.png").write_bytes(PNG_1x1)
    drawn = []
    original = report_curves.comparison_png
    monkeypatch.setattr(report_curves, "comparison_png", lambda s, *a: drawn.append(s) or original(s, *a))
    out = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(out), "--wandb-mode", "disabled"]) == 0
    printed = capsys.readouterr().out
    assert "anomalyclip gaussian_sigma=2.0" in printed and "report.html" in printed
    assert (out / "report.md").read_text().startswith("# Results (6 runs, 2 settings)")
    assert next(csv.DictReader((out / "report.csv").open()))["setting"].startswith("anomalyclip")
    page = (out / "report.html").read_text()
    assert "<table>" in page and "anomalyclip gaussian_sigma=0.0" in page and "<style>" in page
    # one figure compares the settings: every replicate's curve, and each panel's legend has the metric
    assert (
        page.count('class="wide" src="data:image/png;base64,') == 1
        and "synthetic / ring</figcaption>" in page
    )
    (settings,) = drawn
    assert [len(s.replicates) for s in settings] == [3, 2]
    assert settings[0].legends[0] == "anomalyclip gaussian_sigma=0.0: AUROC 51.3±8.1 (seeds 1, 2, 3)"
    assert settings[1].legends[2] == "anomalyclip gaussian_sigma=2.0: AUPRO 25.0±0.0 (seeds 1, 2)"
    # then each setting's first replicate's curves.png, embedded, and links to every run's pictures
    assert page.count(f'src="data:image/png;base64,{base64.b64encode(PNG_1x1).decode()}"') == 2
    assert page.count('<a href="../runs/') == 2 * len(replicates)
    assert '<a href="../runs/s2.0_2/plots/synthetic/ring/gallery.png">gallery.png</a>' in page
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_published_real_iad_and_adaclip_rows_name_their_source():
    """Real-IAD's reference numbers (UniADet's README) and AdaCLIP's (its paper's image AUROC, as
    sotaverified.org lists them) come with their metrics and their source."""
    anomalyclip, winclip, vand = (get_method(m).published for m in ("anomalyclip", "winclip", "vand"))
    assert anomalyclip.results["realiad"] == pytest.approx({"image_auroc": 0.695, "pixel_ap": 0.267})
    assert winclip.results["realiad"] == pytest.approx({"image_auroc": 0.670, "pixel_ap": 0.033})
    assert "realiad" not in vand.results and "mvtec_ad2" not in anomalyclip.results
    assert "UniADet" in anomalyclip.source and "AnomalyCLIP paper" in anomalyclip.source
    assert "UniADet" not in vand.source  # each method names the sources of its own numbers
    adaclip = get_method("adaclip").published
    assert sorted(adaclip.results) == ["mpdd", "mvtec", "visa"]
    assert adaclip.results["visa"] == pytest.approx({"image_auroc": 0.858})
    assert "AdaCLIP paper" in adaclip.source and "sotaverified" in adaclip.source
    anomalydino = get_method("anomalydino").published  # few-shot only: a 1-shot row, no zero-shot one
    assert anomalydino.numbers(0) == {} and anomalydino.numbers(1) == {"mvtec": {"image_auroc": 0.966}}
    assert "AnomalyDINO paper" in anomalydino.source_of(
        1
    ) and "not anomalib's defaults" in anomalydino.source_of(1)


def test_mean_curves_average_each_fpr_and_take_the_top_of_vertical_segments():
    from pipelines.report_curves import GRID, vertical_mean

    step = (np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.8, 1.0, 1.0]))  # vertical at FPR 0
    diagonal = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    x, y = vertical_mean([step, diagonal], 1.0)
    assert x.shape == (GRID,) and x[-1] == 1.0
    assert y[0] == pytest.approx(0.4) and y[GRID // 4] == pytest.approx((0.9 + 0.25) / 2)
    x, y = vertical_mean([diagonal], 0.3)  # PRO: up to the FPR limit
    assert x[-1] == pytest.approx(0.3) and y[-1] == pytest.approx(0.3)


def _with_categories(run: Path, dataset: str, categories: dict[str, dict[str, float | None]]) -> None:
    """Give a run's only target per-category numbers (and a dataset name with published numbers, trained in
    the paper's direction for it)."""
    results = json.loads((run / "results.json").read_text())
    (target,) = results["targets"].values()
    results["targets"] = {dataset: {**target, "dataset": dataset, "categories": categories}}
    results["source"] = "visa" if dataset == "mvtec" else "mvtec"
    (run / "results.json").write_text(json.dumps(results))


@pytest.fixture()
def category_sweep(tmp_path) -> Path:
    """Two settings x two seeds on two categories of 'mvtec' (which has published numbers)."""
    runs = tmp_path / "runs"
    numbers = {
        ("0.0", 1): (0.80, 0.60),
        ("0.0", 2): (0.82, 0.64),
        ("2.0", 1): (0.90, 0.50),
        ("2.0", 2): (0.92, 0.52),
    }
    for (sigma, seed), (bottle, cable) in numbers.items():
        run = make_run(runs, f"s{sigma}_{seed}", [f"method.gaussian_sigma={sigma}", f"seed={seed}"], 0.7)
        pixel = {"pixel_auroc": 0.9, "aupro": 0.7 + 0.1 * (sigma == "2.0")}
        _with_categories(
            run,
            "mvtec",
            {
                "bottle": {"image_auroc": bottle, "image_ap": bottle, **pixel},
                "cable_x": {"image_auroc": cable, "image_ap": None, **pixel},
            },
        )
    return runs


def test_per_category_tables_in_markdown_csv_and_html(tmp_path, category_sweep):
    report = build_report([str(category_sweep)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    section = report.markdown.split("## Per category: mvtec")[1]
    assert "| category | anomalyclip gaussian_sigma=0.0 | anomalyclip gaussian_sigma=2.0 |" in section
    assert "| bottle | 81.0±1.4, 81.0±1.4 (n=2) | 91.0±1.4, 91.0±1.4 (n=2) |" in section
    assert "| cable_x | 62.0±2.8, - (n=2) | 51.0±1.4, - (n=2) |" in section  # undefined AP: '-'
    assert "| mean | 70.0±0.0, 35.0±0.0 (n=2) |" in section  # the category mean of results.json
    rows = [r for r in csv_rows(report) if r["setting"] == "anomalyclip gaussian_sigma=2.0"]
    bottle = next(r for r in rows if r["category"] == "bottle" and r["metric"] == "image_auroc")
    assert float(bottle["mean"]) == pytest.approx(0.91) and float(bottle["std"]) == pytest.approx(
        0.02**0.5 / 10
    )
    assert bottle["n"] == "2" and bottle["seeds"] == "1 2" and bottle["published"] == ""
    mean = next(r for r in rows if r["category"] == "mean" and r["metric"] == "image_auroc")
    assert mean["published"] == ""  # gaussian_sigma=2.0 is not the paper's setting (4): none beside it
    assert not any(r["category"] == "cable_x" and r["metric"] == "image_ap" for r in rows)
    page = report.html_path.read_text()
    assert "<summary>Per category: mvtec</summary>" in page and "<th>category</th>" in page


def test_latex_tables_mark_best_and_second_per_row_and_metric(tmp_path, category_sweep):
    import re
    import shutil
    import subprocess

    # a third setting, so that each row has a best, a second and a third
    run = make_run(category_sweep, "s4.0_1", ["method.gaussian_sigma=4.0", "seed=1"], 0.7)
    pixel = {"pixel_auroc": 0.9, "aupro": 0.5}
    _with_categories(
        run,
        "mvtec",
        {
            "bottle": {"image_auroc": 0.85, "image_ap": 0.95, **pixel},
            "cable_x": {"image_auroc": 0.4, "image_ap": 0.3, **pixel},
        },
    )
    out = tmp_path / "rep"
    assert (
        main(
            [
                "report",
                str(category_sweep),
                "--out",
                str(out),
                "--latex",
                "--reference",
                "--wandb-mode",
                "disabled",
            ]
        )
        == 0
    )
    tex = (out / "report.tex").read_text()
    assert tex.startswith("\\documentclass") and tex.rstrip().endswith("\\end{document}")
    assert (
        tex.count("\\begin{table}") == tex.count("\\end{table}") == 4
    )  # image, pixel; per category: image, pixel
    # a rule under each header, one above each per-category table's mean row
    assert tex.count("\\toprule") == tex.count("\\midrule") - 2 == tex.count("\\bottomrule") == 4
    assert "-0.0" not in tex
    lines: dict[str, str] = {}  # label -> its first row (the image tables come first)
    for line in tex.splitlines():
        if " & " in line and line.endswith("\\\\"):
            lines.setdefault(line.split(" & ")[0], line)
    for line in lines.values():  # every row: a label and one cell per setting column
        assert len(re.split(r"(?<!\\)&", line)) == 4
    assert (
        "Category & anomalyclip gaussian\\_sigma=0.0 & anomalyclip gaussian\\_sigma=2.0 & anomalyclip gaussian\\_sigma=4.0"
        in tex
    )
    # bottle AUROC: 81.0 < 85.0 < 91.0 -> 91.0 bold, 85.0 underlined; AP: 81.0 < 91.0 < 95.0
    bottle = [cell.strip() for cell in lines["bottle"].rstrip(" \\").split(" & ")[1:]]
    assert bottle[0].startswith("81.0") and " / 81.0" in bottle[0]
    assert bottle[1].startswith("\\textbf{91.0}") and "/ \\underline{91.0}" in bottle[1]
    assert bottle[2].startswith("\\underline{85.0}") and "/ \\textbf{95.0}" in bottle[2]
    assert "\\scriptsize $\\pm$1.4" in bottle[0] and "$\\pm$" not in bottle[2]  # std only with n >= 2
    # cable_x AP is undefined in two columns: '--', and a single value is not ranked
    assert lines["cable\\_x"].count("--") >= 2 and "\\textbf{30.0}" not in lines["cable\\_x"]
    # --reference: dataset cells carry their difference from the published number (AnomalyCLIP, mvtec 91.5)
    assert "{\\scriptsize ($-$21.5)}" in lines["mvtec"]
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: the structure above is checked, compiling is not")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=out, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert (out / "report.pdf").stat().st_size > 0 and "Overfull" not in (out / "report.log").read_text()


def test_draws_are_replicates_like_seeds(tmp_path):
    runs = tmp_path / "runs"
    for draw, value in ((0, 0.6), (1, 0.8)):
        run = make_run(runs, f"draw{draw}", [], value)
        results = json.loads((run / "results.json").read_text())
        (run / "results.json").write_text(json.dumps({**results, "draw": draw}))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    found = row(csv_rows(report), "anomalyclip", "image_auroc")
    assert int(found["n"]) == 2 and float(found["mean"]) == pytest.approx(0.7)
    assert found["seeds"] == "111/draw0 111/draw1" and "identical runs" not in report.markdown


# --- --bootstrap and --compare --------------------------------------------------------------------------
IMAGES = {"ring": 7, "cells": 6}  # test images per category (the first 3 normal)


def _save_run_maps(run: Path, rng: np.random.Generator, shift: float, rename: str | None = None) -> None:
    """What eval.save_maps writes (maps, masks, image_scores.csv) for a small two-category target, and the
    run's results.json numbers computed from them as the evaluation would."""
    from lightning_modules.metrics import binary_auroc, binary_average_precision, f1_max, pixel_metrics
    from pipelines.map_writer import save_mask

    folder = run / "maps" / "synthetic"
    lines = ["image,category,label,score"]
    categories = {}
    for category, n in IMAGES.items():
        maps, masks, scores, labels = [], [], [], []
        for i in range(n):
            label = int(i >= 3)
            mask = np.zeros((8, 8), dtype=bool)
            if label:
                mask[1 + i % 3 : 4 + i % 3, 2:5] = True
            amap = (rng.random((8, 8)) + shift * mask).astype(np.float32)
            name = f"{category}/test/{'bad' if label else 'good'}/{i:03d}"
            name = rename if rename and name.endswith("/004") and category == "ring" else name
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{name}.npy", amap)
            save_mask(folder / f"{name}.mask.png", mask)
            score = float(amap.max()) + float(rng.normal(0, 0.3))  # a method's own score: not separable
            maps.append(amap), masks.append(mask), scores.append(score), labels.append(label)
            lines.append(f"{name},{category},{label},{score!r}")
        values, _ = pixel_metrics(maps, masks)
        categories[category] = {
            **values,
            **{k: f(np.array(scores), np.array(labels)) for k, f in (
                ("image_auroc", binary_auroc), ("image_ap", binary_average_precision), ("image_f1_max", f1_max))},
        }  # fmt: skip
    (folder / "image_scores.csv").write_text("\n".join(lines) + "\n")
    results = json.loads((run / "results.json").read_text())
    target = results["targets"]["synthetic"]
    target["categories"] = categories
    target["mean"] = {m: float(np.mean([c[m] for c in categories.values()])) for m in categories["ring"]}
    (run / "results.json").write_text(json.dumps(results))


@pytest.fixture()
def runs_with_maps(tmp_path) -> Path:
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for sigma, shift in ((0.0, 0.3), (2.0, 0.8)):
        for seed in (1, 2):
            run = make_run(runs, f"s{sigma}_{seed}", [f"method.gaussian_sigma={sigma}", f"seed={seed}"], 0.5)
            _save_run_maps(run, rng, shift)
    return runs


def _resampled(runs: Path, folders: list[str], category: str, metric: str, n: int, seed: int) -> np.ndarray:
    """Independently: the replicates' mean of ``metric`` on each resample, every resample's images listed
    (an image drawn twice appears twice) and scored by zsad's functions."""
    from lightning_modules.metrics import binary_auroc, pixel_metrics
    from lightning_modules.metrics.bootstrap import stratified_weights
    from pipelines.report_bootstrap import _generator

    per_run = []
    for folder in folders:
        maps_dir = runs / folder / "maps" / "synthetic"
        rows = sorted(
            (r for r in csv.DictReader((maps_dir / "image_scores.csv").open()) if r["category"] == category),
            key=lambda r: r["image"],
        )
        images = tuple((r["image"], int(r["label"])) for r in rows)
        weights = stratified_weights([label for _, label in images], n, _generator(seed, category, images))
        values = []
        for w in weights:
            drawn = [r for r, k in zip(rows, w, strict=True) for _ in range(k)]
            if metric == "image_auroc":
                values.append(
                    binary_auroc([float(r["score"]) for r in drawn], [int(r["label"]) for r in drawn])
                )
            else:
                from datamodules.images import load_mask

                maps = [np.load(maps_dir / f"{r['image']}.npy") for r in drawn]
                masks = [load_mask(maps_dir / f"{r['image']}.mask.png") for r in drawn]
                values.append(pixel_metrics(maps, masks)[0][metric])
        per_run.append(values)
    return np.mean(per_run, axis=0)


def test_bootstrap_intervals_and_paired_comparison_equal_an_independent_computation(tmp_path, runs_with_maps):
    runs = runs_with_maps
    out = tmp_path / "rep"
    report = build_report(
        [str(runs)], out=str(out), wandb_mode="disabled", bootstrap=60, seed=3,
        compare=("gaussian_sigma=2.0", "sigma=0.0"),
    )  # fmt: skip
    assert "saved maps give other" not in report.markdown  # the maps reproduce results.json
    rows = csv_rows(report)
    strong, weak = "anomalyclip gaussian_sigma=2.0", "anomalyclip gaussian_sigma=0.0"
    # a category's interval: percentiles of the replicates' mean on the same resamples
    aupro = _resampled(runs, ["s2.0_1", "s2.0_2"], "cells", "aupro", 60, 3)
    found = next(r for r in rows if (r["setting"], r["category"], r["metric"]) == (strong, "cells", "aupro"))
    assert [float(found["ci_low"]), float(found["ci_high"])] == pytest.approx(
        np.percentile(aupro, [2.5, 97.5]), abs=1e-12
    )
    # the dataset's: the categories' mean on each resample, then percentiles; the paired difference likewise
    dataset = {
        folders[0]: np.mean([_resampled(runs, folders, c, "image_auroc", 60, 3) for c in IMAGES], axis=0)
        for folders in (["s2.0_1", "s2.0_2"], ["s0.0_1", "s0.0_2"])
    }
    found = next(
        r for r in rows if (r["setting"], r["category"], r["metric"]) == (weak, "mean", "image_auroc")
    )
    assert float(found["ci_low"]) == pytest.approx(np.percentile(dataset["s0.0_1"], 2.5), abs=1e-12)
    (paired,) = [c for c in report.comparisons if c.metric == "image_auroc"]
    difference = dataset["s2.0_1"] - dataset["s0.0_1"]
    assert paired.interval == pytest.approx(tuple(np.percentile(difference, [2.5, 97.5])), abs=1e-12)
    far = min((difference <= 0).sum(), (difference >= 0).sum())
    assert paired.p_value == pytest.approx(min(1.0, 2 * (far + 1) / 61))
    assert paired.b == pytest.approx(float(found["mean"])) and paired.difference == paired.a - paired.b
    assert {c.metric for c in report.comparisons} == {"image_auroc", "image_ap", "pixel_auroc", "aupro"}
    assert f"## Paired comparison: {strong} − {weak}" in report.markdown
    assert (
        "95% percentile bootstrap intervals" in report.markdown
        and " [" in report.markdown.split("## image")[1]
    )
    assert (out / "compare.csv").read_text().startswith("dataset,metric,setting_a,setting_b")
    assert "Paired comparison" in report.html_path.read_text()


def test_confidence_sets_the_intervals_level(tmp_path, runs_with_maps):
    """--confidence 0.8: the 10th and 90th percentiles of the same resamples, named in the text; a level
    outside (0, 1), or one without --bootstrap, is refused."""
    from datamodules.errors import ConfigError

    runs = runs_with_maps
    report = build_report(
        [str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled", bootstrap=40, seed=3, confidence=0.8,
        compare=("gaussian_sigma=2.0", "sigma=0.0"),
    )  # fmt: skip
    aupro = _resampled(runs, ["s2.0_1", "s2.0_2"], "cells", "aupro", 40, 3)
    found = next(
        r
        for r in csv_rows(report)
        if (r["setting"], r["category"], r["metric"]) == ("anomalyclip gaussian_sigma=2.0", "cells", "aupro")
    )
    assert [float(found["ci_low"]), float(found["ci_high"])] == pytest.approx(
        np.percentile(aupro, [10, 90]), abs=1e-12
    )
    assert "80% percentile bootstrap intervals" in report.markdown and "95%" not in report.markdown
    assert "difference [80% interval]" in report.markdown
    for level in (0.0, 1.0, 95.0):
        with pytest.raises(ConfigError, match="strictly between 0 and 1"):
            build_report(
                [str(runs)], out=str(tmp_path / "a"), wandb_mode="disabled", bootstrap=5, confidence=level
            )
    with pytest.raises(ConfigError, match="add --bootstrap N"):
        build_report([str(runs)], out=str(tmp_path / "b"), wandb_mode="disabled", confidence=0.9)


def test_compare_refuses_runs_on_other_images_and_bootstrap_names_missing_maps(tmp_path, runs_with_maps):
    from datamodules.errors import ZsadError

    runs = runs_with_maps
    other = make_run(runs, "other_images", ["method.gaussian_sigma=4.0", "seed=1"], 0.5)
    _save_run_maps(other, np.random.default_rng(1), 0.5, rename="ring/test/bad/104")
    with pytest.raises(
        ZsadError, match=r"synthetic/ring: the runs did not evaluate the same images: 1 .*104"
    ):
        build_report([str(runs)], out=str(tmp_path / "a"), wandb_mode="disabled", bootstrap=5,
                     compare=("sigma=4.0", "sigma=0.0"))  # fmt: skip
    with pytest.raises(ConfigError, match="matches several settings"):
        build_report(
            [str(runs)], out=str(tmp_path / "a"), wandb_mode="disabled", compare=("anomalyclip", "sigma=0.0")
        )
    bare = tmp_path / "bare"
    make_run(bare, "r", [], 0.5)
    with pytest.raises(
        ZsadError, match=r"needs the saved maps of .* evaluate it again with eval.save_maps=true"
    ):
        build_report([str(bare)], out=str(tmp_path / "b"), wandb_mode="disabled", bootstrap=5)


def test_reference_rows_are_those_measured_in_the_columns_setting(tmp_path):
    """MuSc's README gives each backbone and size its own numbers: a DINOv2 column gets its study row, the
    default column the paper's, and a setting no source measured (other layers, other r_list) none."""
    base = yaml.safe_load(to_yaml(compose("musc_mvtec_visa_btad")))
    runs = tmp_path / "runs"
    settings = {
        "default": {},
        "dinov2_b14": {
            "backbone_family": "dinov2",
            "dino": {**base["method"]["dino"], "name": "vit_base_patch14_dinov2", "image_size": 336},
            "feature_layers": [2, 5, 8, 11],
        },
        "clip_b32": {
            "backbone": {**base["method"]["backbone"], "name": "ViT-B-32-quickgelu", "image_size": 512},
            "feature_layers": [2, 5, 8, 11],
        },
        "b32_other_layers": {
            "backbone": {**base["method"]["backbone"], "name": "ViT-B-32-quickgelu", "image_size": 512},
        },
        "other_r_list": {"r_list": [1, 3]},
    }
    for folder, method in settings.items():
        run_dir = runs / folder
        run_dir.mkdir(parents=True)
        cfg = copy.deepcopy(base)
        cfg["method"].update(method)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({**cfg, "run_dir": str(run_dir)}))
        mean = {"image_auroc": 0.9, "image_ap": 0.9, "pixel_auroc": 0.9, "aupro": 0.8, "aupro_cflow": 0.8}
        results = {
            "experiment": cfg["name"], "method": "musc", "source": None, "seed": cfg["seed"],
            "run_dir": str(run_dir), "created": "2026-01-01T00:00:00+00:00",
            "targets": {"mvtec": {"dataset": "mvtec", "n_images": 20, "version": None, "mean": mean}},
        }  # fmt: skip
        (run_dir / "results.json").write_text(json.dumps(results))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), reference=True, wandb_mode="disabled")
    published = {
        r["runs"].rsplit("/", 1)[-1]: r["published"] for r in csv_rows(report) if r["metric"] == "image_auroc"
    }
    assert published == {
        "default": "0.9777",  # the paper's default: ViT-L-14-336 at 518 px
        "dinov2_b14": "0.9567",  # README, dinov2_vitb14 at 336 px
        "clip_b32": "0.8991",  # README, ViT-B-32 at 512 px
        "b32_other_layers": "",  # their ViT-B runs used layers 2 5 8 11
        "other_r_list": "",
    }
    assert "dinov2_vitb14 at 336 px" in report.markdown and "ViT-B-32 at 512 px" in report.markdown


def test_rows_that_share_normal_images_resample_them_alike():
    """MVTec LOCO's two rows of an object both hold its good images (saved as ``{stem}@{row}``): a resample
    draws them once for both rows, so the rows' numbers stay paired and the dataset mean's interval sees the
    shared images; a category without shared images keeps its one generator."""
    from lightning_modules.metrics.bootstrap import stratified_weights
    from pipelines.report_bootstrap import _generator, category_weights

    good = [f"box/test/good/{i:03d}" for i in range(4)]
    rows = {
        row: tuple(
            [(f"{g}@{row}", 0) for g in good] + [(f"box/test/{row}_anomalies/{i:03d}", 1) for i in range(k)]
        )
        for row, k in (("box_logical", 3), ("box_structural", 5))
    }
    weights = {row: category_weights(7, row, images, 200) for row, images in rows.items()}
    logical, structural = weights["box_logical"], weights["box_structural"]
    np.testing.assert_array_equal(logical[:, :4], structural[:, :4])  # the good images: drawn alike
    assert (logical[:, :4].sum(axis=1) == 4).all() and (logical[:, 4:].sum(axis=1) == 3).all()
    assert (structural[:, 4:].sum(axis=1) == 5).all()  # stratified: as many of each label as the row has
    assert len({tuple(w) for w in logical[:, :4]}) > 20  # and still resampled (35 ways to draw 4 of 4)
    plain = (("cells/test/good/000", 0), ("cells/test/good/001", 0), ("cells/test/hole/000", 1))
    np.testing.assert_array_equal(
        category_weights(7, "cells", plain, 50),
        stratified_weights([0, 0, 1], 50, _generator(7, "cells", plain)),
    )


def test_n_counts_the_replicates_behind_each_number(tmp_path):
    """A seed that lacks a category (or has a metric undefined) adds nothing to that number: the tables'
    ``n`` says how many replicates each mean±std is over (numpy, ddof=1), as the CSV's does."""
    runs = tmp_path / "runs"
    seeds = {  # seed -> categories (image_auroc, pixel_auroc); seed 3 has no cable, no pixel numbers
        1: {"bottle": (0.90, 0.80), "cable": (0.50, 0.60)},
        2: {"bottle": (0.80, 0.70), "cable": (0.56, 0.62)},
        3: {"bottle": (0.86, None)},
    }
    for seed, categories in seeds.items():
        run = make_run(runs, f"s{seed}", [f"seed={seed}"], 0.7)
        results = json.loads((run / "results.json").read_text())
        target = results["targets"]["synthetic"]
        target["categories"] = {c: {"image_auroc": i, "pixel_auroc": p} for c, (i, p) in categories.items()}
        target["mean"] = {
            m: (float(np.mean(v)) if (v := [c[k] for c in categories.values() if c[k] is not None]) else None)
            for k, m in ((0, "image_auroc"), (1, "pixel_auroc"))
        }
        target["mean"]["image_ap"] = 0.5 if seed < 3 else None
        (run / "results.json").write_text(json.dumps(results))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    section = report.markdown.split("## Per category: synthetic")[1]

    def shown(values: list[float]) -> str:
        text = f"{100 * np.mean(values):.1f}"
        return text if len(values) < 2 else f"{text}±{100 * np.std(values, ddof=1):.1f}"

    cable_image = [seeds[s]["cable"][0] for s in (1, 2)]
    cable_pixel = [seeds[s]["cable"][1] for s in (1, 2)]
    assert f"| cable | {shown(cable_image)}, - (n=2) |" in section  # seed 3 has no cable
    assert f"| cable | {shown(cable_pixel)}, - (n=2) |" in section
    bottle_pixel = [seeds[s]["bottle"][1] for s in (1, 2)]
    assert f"| bottle | {shown(bottle_pixel)}, - (n=2) |" in section  # seed 3's pixel_auroc is undefined
    bottle_image = [seeds[s]["bottle"][0] for s in (1, 2, 3)]
    assert f"| bottle | {shown(bottle_image)}, - (n=3) |" in section
    # the dataset's image row: AUROC over the three seeds, AP over two (each metric's n where they differ)
    dataset = report.markdown.split("## image level")[1]
    assert (
        f"| synthetic | {shown([np.mean(c) for c in ([0.9, 0.5], [0.8, 0.56], [0.86])])}, 50.0±0.0 (n=3, 2) |"
        in dataset
    )
    rows = csv_rows(report)
    for category, metric, values in (
        ("cable", "image_auroc", cable_image),
        ("bottle", "pixel_auroc", bottle_pixel),
        ("bottle", "image_auroc", bottle_image),
    ):
        found = next(r for r in rows if (r["category"], r["metric"]) == (category, metric))
        assert int(found["n"]) == len(values)
        assert float(found["std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    # the curves' legends name the seeds behind their number, as n counts them
    from pipelines.report_curves import _legend
    from pipelines.report_grouping import entries_of, group, load_runs

    grouping = group(entries_of([r for d in sorted(runs.iterdir()) for r in load_runs(d)]))
    (cell,) = grouping.cells.values()
    assert _legend("x", cell, "cable", "image_auroc") == f"x: AUROC {shown(cable_image)} (seeds 1, 2)"
    assert _legend("x", cell, "bottle", "image_auroc") == f"x: AUROC {shown(bottle_image)} (seeds 1, 2, 3)"


def test_latex_of_a_table_without_any_number_says_so(tmp_path):
    """A dataset without pixel ground truth has no pixel numbers: its LaTeX pixel table is written (every
    cell '-') with n = 0 in the caption, not a crash."""
    runs = tmp_path / "runs"
    for seed in (1, 2):
        run = make_run(runs, f"s{seed}", [f"seed={seed}"], 0.7 + seed / 100)
        results = json.loads((run / "results.json").read_text())
        results["targets"]["synthetic"]["mean"].update(pixel_auroc=None, aupro=None)
        (run / "results.json").write_text(json.dumps(results))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled", latex=True)
    text = report.latex_path.read_text()
    assert "Image level, AUROC / AP (\\%): mean over $n = 2$ replicates" in text
    assert "Pixel level, AUROC / AUPRO (\\%): mean over $n = 0$ replicates" in text


@pytest.mark.parametrize("selection", ["random", "sorted"])
def test_random_reference_draws_that_happen_to_coincide_are_each_a_replicate(tmp_path, selection):
    """Random few-shot draws from a small pool can pick the same references (1-shot from 2 images: one
    chance in two), and a deterministic method then gives equal numbers: each draw is still a sample of
    the protocol, and the cell's mean is over all of them, as results.json's mean over draws. A `sorted`
    selection, which the seed does not change, stays one measurement."""
    runs = tmp_path / "runs"
    draws = ((1, 0, 0.8), (1, 1, 0.6), (2, 0, 0.8))  # (seed, draw, bottle): seed 2's draw 0 = seed 1's draw 0
    for seed, draw, bottle in draws:
        run = make_run(
            runs,
            f"s{seed}_{draw}",
            [f"seed={seed}", "protocol.shots=1", f"protocol.selection={selection}"],
            0.7,
        )
        results = json.loads((run / "results.json").read_text())
        target = results["targets"]["synthetic"]
        target["categories"] = {"bottle": {"image_auroc": bottle}}
        target["mean"] = {"image_auroc": bottle}
        (run / "results.json").write_text(json.dumps({**results, "draw": draw}))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled")
    found = row(csv_rows(report), "anomalyclip 1-shot", "image_auroc")
    if selection == "random":
        values = [bottle for *_, bottle in draws]
        assert (int(found["n"]), float(found["mean"])) == (3, pytest.approx(np.mean(values)))
        assert "identical results" not in report.markdown
    else:
        assert (int(found["n"]), float(found["mean"])) == (2, pytest.approx(0.7))
        assert "identical results in every category" in report.markdown


def test_no_published_numbers_beside_a_test_of_weights_trained_in_another_setting(tmp_path):
    """`zsad test` of a checkpoint: the test config's method settings can be the authors' while the weights
    were trained with another lr (results.json trained_setting): the paper's numbers stand beside the
    weights trained in the authors' setting only."""
    runs = tmp_path / "runs"
    defaults = demo_config()["method"]
    for name, lr in (("paper", defaults["lr"]), ("other", 10 * defaults["lr"])):
        run = make_run(runs, f"test_{name}", [f"checkpoint=/r/{name}/checkpoints/last.ckpt"], 0.8)
        _with_categories(run, "mvtec", {"bottle": {"image_auroc": 0.8}})
        results = json.loads((run / "results.json").read_text())
        trained = {"method": {**defaults, "lr": lr}, "trainer": {"max_epochs": 15}}  # the paper's epochs
        (run / "results.json").write_text(json.dumps({**results, "trained_setting": trained}))
    report = build_report([str(runs)], out=str(tmp_path / "rep"), wandb_mode="disabled", reference=True)
    published = {
        r["setting"]: r["published"]
        for r in csv_rows(report)
        if (r["category"], r["metric"]) == ("mean", "image_auroc")
    }
    paper, other = (f"anomalyclip trained.method.lr={lr}" for lr in (defaults["lr"], 10 * defaults["lr"]))
    assert float(published[paper]) == pytest.approx(0.915)  # AnomalyCLIP's MVTec AD image AUROC
    assert published[other] == ""


def test_published_numbers_stand_only_beside_runs_trained_in_the_papers_direction(tmp_path):
    """The paper's MVTec AD numbers were trained on VisA for 15 epochs: a run trained on MVTec AD and tested on
    MVTec AD (in domain) gets no published row, nor one trained for 1 epoch; one trained as the paper does;
    AdaCLIP's two-source directions compare as sets; a training-free method's numbers stand beside any run."""
    cases = (("in_domain", "mvtec", 15, ""), ("from_visa", "visa", 15, "0.915"), ("one_epoch", "visa", 1, ""))
    for folder, source, epochs, expected in cases:  # the paper: from VisA, 15 epochs
        run = make_run(tmp_path / folder, "r", [f"trainer.max_epochs={epochs}"], 0.9)
        _with_categories(run, "mvtec", {"bottle": {"image_auroc": 0.9}})
        results = json.loads((run / "results.json").read_text())
        results["source"] = source
        (run / "results.json").write_text(json.dumps(results))
        report = build_report([str(tmp_path / folder)], out=str(tmp_path / f"rep_{folder}"), reference=True)
        assert row(csv_rows(report), "anomalyclip", "image_auroc")["published"] == expected, folder
    adaclip = get_method("adaclip").published
    assert adaclip.measured_after("visa", "colondb+mvtec") and adaclip.measured_after(
        "mvtec", "visa+clinicdb"
    )
    assert not adaclip.measured_after("visa", "mvtec") and not adaclip.measured_after(
        "mvtec", "mvtec+colondb"
    )
    assert get_method("winclip").published.measured_after("mvtec", "mvtec")  # trains on nothing
    assert get_method("anomalyclip").published.measured_after(
        "realiad", "visa"
    )  # UniADet: direction unstated
