"""The protocols (docs/protocols.md), the few-shot one end to end: a k-shot run evaluates every reference draw,
records each draw's files and numbers, means them; ``zsad report`` treats draws as replicates beside the
zero-shot column; methods without a few-shot mode and targets without normal training images are refused in
one line."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from datamodules.synthetic import generate_synthetic_dataset
from lightning_modules import registry
from lightning_modules.method_spec import FEW_SHOT
from lightning_modules.registry import get_method
from pipelines.cli import main
from pipelines.report import build_report

QUIET = ["logger.wandb.mode=disabled", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """WinCLIP (tiny) on a synthetic target with three normal training images per category."""
    base = tmp_path_factory.mktemp("protocol")
    kwargs = dict(seed=3, image_size=32, n_train=3, n_test_good=3, n_test_defect_per_kind=1)
    target = generate_synthetic_dataset(base / "vivid", style="vivid", categories=["ring", "cells"], **kwargs)
    (base / "tgt.yaml").write_text(
        f"name: synthetic\nroot: {target.root}\neval_batch_size: 5\nnum_workers: 0\n"
    )
    path = base / "experiment.yaml"
    path.write_text(
        f"defaults:\n  method: winclip_tiny\n  targets: [{base / 'tgt.yaml'}]\n"
        f"name: fewshot\noutput_dir: {base / 'runs'}\ntrainer: {{accelerator: cpu, devices: '1'}}\n"
    )
    return path


def test_a_k_shot_run_records_every_draw_and_the_report_sets_it_beside_zero_shot(
    experiment, tmp_path, capsys
):
    few, zero = tmp_path / "few", tmp_path / "zero"
    assert (
        main(["run", str(experiment), *QUIET, "protocol.shots=2", "protocol.draws=2", f"run_dir={few}"]) == 0
    )
    assert "protocol: 2-shot, mean over 2 of 2 reference draws" in capsys.readouterr().out
    assert main(["run", str(experiment), *QUIET, f"run_dir={zero}"]) == 0

    results = json.loads((few / "results.json").read_text())
    assert results["protocol"] == {"name": "few_shot", "label": "2-shot (2 draws)", "shots": 2, "draws": 2}
    target = results["targets"]["synthetic"]
    tested = set(target["categories"])
    draws = results["draws"]
    assert [d["draw"] for d in draws] == [0, 1] and [d["seed"] for d in draws] == [[111, 0], [111, 1]]
    root = Path(target["root"])
    test_images = {p.relative_to(root).as_posix() for p in root.glob("*/test/*/*.png")}
    for d in draws:
        files = d["references"]["synthetic"]["files"]
        assert set(files) == tested
        for category, names in files.items():
            assert len(set(names)) == 2 and all(n.startswith(f"{category}/train/good/") for n in names)
            assert not set(names) & test_images
    assert draws[0]["references"] != draws[1]["references"]
    # the run's numbers are the mean over the draws, with their spread and count
    per_draw = [d["targets"]["synthetic"]["mean"]["image_auroc"] for d in draws]
    assert target["mean"]["image_auroc"] == pytest.approx(statistics.fmean(per_draw))
    assert target["std"]["image_auroc"] == pytest.approx(statistics.stdev(per_draw))
    assert target["n_draws"] == 2
    # the loggers' config holds the same file lists (W&B's config, the CSV log's hparams.yaml)
    hparams = yaml.safe_load((few / "logs" / "hparams.yaml").read_text())
    assert hparams["references"]["draw1"]["synthetic"] == draws[1]["references"]["synthetic"]["files"]
    # the zero-shot run differs: the references change WinCLIP's maps
    zero_results = json.loads((zero / "results.json").read_text())
    assert zero_results["protocol"]["name"] == "zero_shot" and "draws" not in zero_results
    assert zero_results["targets"]["synthetic"]["mean"]["pixel_auroc"] != target["mean"]["pixel_auroc"]

    report = build_report([str(zero), str(few)], out=str(tmp_path / "report"), wandb_mode="disabled")
    rows = list(csv.DictReader(io.StringIO(report.csv_text)))
    assert "| dataset | winclip zero-shot | winclip 2-shot |" in report.markdown  # side by side
    cell = next(
        r
        for r in rows
        if (r["setting"], r["category"], r["metric"]) == ("winclip 2-shot", "mean", "image_auroc")
    )
    assert int(cell["n"]) == 2 and cell["seeds"] == "111/draw0 111/draw1"
    assert float(cell["mean"]) == pytest.approx(statistics.fmean(per_draw))
    assert float(cell["std"]) == pytest.approx(statistics.stdev(per_draw))


def test_a_method_without_a_few_shot_mode_is_refused_in_one_line(experiment, tmp_path, capsys, monkeypatch):
    args = [
        "run",
        str(experiment),
        *QUIET,
        "method=anomalyclip_tiny",
        "protocol.shots=1",
        f"run_dir={tmp_path}/r",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "zsad: error: method 'anomalyclip' has no few-shot mode (its protocols: zero_shot); "
        "evaluate it zero-shot (protocol.shots=0)"
    )
    assert main(["run", str(experiment), *QUIET, "protocol.draws=3", f"run_dir={tmp_path}/d"]) == 2
    assert "needs a few-shot protocol: set protocol.shots=K" in capsys.readouterr().err
    assert main(["methods"]) == 0  # the listing says which methods have a few-shot mode
    listing = capsys.readouterr().out
    assert "protocols: zero-shot, few-shot" in listing.split("winclip")[-1]
    assert "protocols: zero-shot\n" in listing.split("anomalyclip")[1]
    assert "protocols: transductive\n" in listing.split("musc")[1]
    assert (
        "protocols: transductive\n" in listing.split("\ndual_image")[1]
    )  # test images as each other's references
    assert "protocols: few-shot, transductive\n" in listing.split("anomalydino")[1]
    # the converse: a method without zero-shot (or transductive) mode refuses a job without references; no
    # registered method is one since AnomalyDINO's batched zero-shot: AnomalyDINO with its few-shot mode only
    few_only = dataclasses.replace(get_method("anomalydino"), protocols=(FEW_SHOT,))
    monkeypatch.setitem(registry._METHODS, "anomalydino", few_only)
    zero_shot = ["run", str(experiment), *QUIET, "method=anomalydino_tiny", f"run_dir={tmp_path}/z"]
    assert main(zero_shot) == 2 and not (tmp_path / "z").exists()
    assert capsys.readouterr().err.strip() == (
        "zsad: error: method 'anomalydino' has no zero-shot mode (its protocols: few_shot): it scores each "
        "image against K normal reference images of its category; evaluate it few-shot: set protocol.shots=K (K > 0)"
    )


def test_a_transductive_method_is_named_so_in_results_sweep_run_names_and_report_columns():
    """MuSc at ``protocol.shots=0`` scores the test images against each other: not zero-shot."""
    from omegaconf import OmegaConf

    from pipelines import config  # noqa: F401  (registers the zsad_protocol resolver)
    from pipelines.protocol import protocol_header
    from pipelines.report_grouping import _column_labels

    def job(method: str) -> object:
        name = "${zsad_protocol:${protocol.shots},${protocol.draws},${method.name}}"
        return OmegaConf.create({"protocol": {"shots": 0, "draws": 1}, "method": {"name": method}, "n": name})

    assert protocol_header(job("musc"), None)["protocol"] == {"name": "transductive", "label": "transductive"}
    assert protocol_header(job("vand"), None)["protocol"] == {"name": "zero_shot", "label": "zero-shot"}
    assert (job("musc").n, job("vand").n) == ("transductive", "zero-shot")
    columns = {(("method.name", f'"{m}"'),): {"method.name": m} for m in ("musc", "vand")}
    labels, _ = _column_labels(columns, ["method.name"], ["method.name"])
    assert sorted(labels.values()) == ["musc transductive", "vand zero-shot"]


def test_a_target_without_normal_training_images_is_refused_before_any_run_folder(
    experiment, tmp_path, capsys
):
    data = yaml.safe_load((experiment.parent / "tgt.yaml").read_text())
    copy = tmp_path / "no_train"
    shutil.copytree(data["root"], copy)
    for train in copy.glob("*/train"):
        shutil.rmtree(train)
    args = [f"targets.0.root={copy}", "protocol.shots=1", f"run_dir={tmp_path / 'r'}"]
    assert main(["run", str(experiment), *QUIET, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no normal training images" in err and "protocol.shots=0" in err
    assert not (tmp_path / "r").exists()


def test_a_training_image_that_is_a_test_image_is_skipped_and_the_run_says_so(
    experiment, tmp_path, capsys, caplog
):
    data = yaml.safe_load((experiment.parent / "tgt.yaml").read_text())
    copy = tmp_path / "overlap"
    shutil.copytree(data["root"], copy)
    shutil.copyfile(copy / "ring" / "test" / "good" / "000.png", copy / "ring" / "train" / "good" / "001.png")
    run = tmp_path / "r"
    args = [f"targets.0.root={copy}", "protocol.shots=2", "protocol.draws=3", f"run_dir={run}"]
    assert main(["run", str(experiment), *QUIET, *args]) == 0
    draws = json.loads((run / "results.json").read_text())["draws"]
    for d in draws:  # 001.png has a test image's bytes: never drawn
        assert sorted(d["references"]["synthetic"]["files"]["ring"]) == [
            f"ring/train/good/00{i}.png" for i in (0, 2)
        ]
    skipped = {d["draw"]: d["references"]["synthetic"].get("skipped_test_images") for d in draws}
    assert {"ring": 1} in skipped.values() and set(map(str, skipped.values())) <= {"None", "{'ring': 1}"}
    shown = ", ".join(str(d) for d, n in skipped.items() if n)
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text
    assert (
        f"category 'ring': drawn training images that are test images (same file or bytes) were skipped in draw(s) {shown}"
        in said
    )


def test_a_resumed_run_keeps_its_finished_draws_and_refuses_other_references(tmp_path):
    from datamodules.errors import DataChangedError
    from pipelines.protocol import resumed_draws

    def header(files: list[str]) -> dict:
        references = {"tgt": {"files": {"ring": files}}}
        draws = [{"draw": d, "seed": [1, d], "references": references, "targets": {}} for d in range(2)]
        return {"protocol": {"name": "few_shot"}, "draws": draws}

    payload = {"categories": {"ring": {"n_normal": 1, "image_auroc": 0.75}}, "mean": {"image_auroc": 0.75}}
    earlier = header(["ring/train/good/0.png"])
    earlier["draws"][0]["targets"] = {"tgt": payload}  # stopped after draw 0
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    resumed = resumed_draws(tmp_path, header(["ring/train/good/0.png"]))
    assert resumed["draws"][0]["targets"] == {"tgt": payload} and resumed["draws"][1]["targets"] == {}
    assert (
        resumed["targets"]["tgt"]["mean"]["image_auroc"] == 0.75 and resumed["targets"]["tgt"]["n_draws"] == 1
    )
    with pytest.raises(DataChangedError, match="draw 0 was evaluated on other reference images"):
        resumed_draws(tmp_path, header(["ring/train/good/1.png"]))


def test_vand_k_shot_image_scores_are_normalised_per_category_in_metrics_and_saved_scores(
    experiment, synthetic_pair, tmp_path
):
    """VAND's k-shot image score depends on the whole category (test.py): the evaluator's metrics and the
    saved image_scores.csv both apply it, so the saved scores reproduce each draw's image AUROC."""
    from sklearn.metrics import roc_auc_score

    source = tmp_path / "src.yaml"
    source.write_text(f"name: synthetic\nroot: {synthetic_pair[0]}\nbatch_size: 4\nnum_workers: 0\n")
    run = tmp_path / "vand"
    args = ["method=vand_tiny", f"source={source}", "trainer.max_epochs=1", "eval.save_maps=true"]
    assert main(["run", str(experiment), *QUIET, *args, "protocol.shots=1", f"run_dir={run}"]) == 0
    results = json.loads((run / "results.json").read_text())
    categories = results["draws"][0]["targets"]["synthetic"]["categories"]
    rows = list(csv.DictReader((run / "draws" / "0" / "maps" / "synthetic" / "image_scores.csv").open()))
    for category, metrics in categories.items():
        mine = [r for r in rows if r["category"] == category]
        auroc = roc_auc_score([int(r["label"]) for r in mine], [float(r["score"]) for r in mine])
        assert auroc == pytest.approx(metrics["image_auroc"])


def test_k_shot_columns_are_compared_with_the_papers_k_shot_numbers():
    from pipelines.report_tables import published_value

    # the zero-shot row, then WinCLIP+'s 4-shot one
    assert published_value("mvtec", "winclip", "image_auroc", shots=0) == pytest.approx(0.918)
    assert published_value("mvtec", "winclip", "image_auroc", shots=4) == pytest.approx(0.952)
    assert published_value("visa", "winclip", "aupro_cflow", shots=1) == pytest.approx(0.851)
    assert published_value("mvtec", "winclip", "image_auroc", shots=3) is None  # the paper has no 3-shot row
    assert published_value("mvtec", "vand", "image_auroc", shots=1) is None  # no stored source


def test_listed_reference_draws_are_the_files_the_lists_name(experiment, tmp_path, capsys):
    """protocol.selection=listed with one list per draw (the authors' k_shot.txt): the run uses and records
    exactly those files, repeats included; a line of no target, a list per draw missing, or lists without
    the selection are refused in one line before any run folder."""
    lists = []
    for d, picks in enumerate((("000", "002"), ("001", "001"))):
        path = tmp_path / f"k_shot_{d}.txt"
        path.write_text("".join(f"data/{c}/train/good/{n}.png\n" for c in ("ring", "cells") for n in picks))
        lists.append(str(path))
    run = tmp_path / "listed"
    listed = [
        "protocol.shots=2",
        "protocol.draws=2",
        "protocol.selection=listed",
        f"protocol.references=[{','.join(lists)}]",
    ]
    assert main(["run", str(experiment), *QUIET, *listed, f"run_dir={run}"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["protocol"]["selection"] == "listed" and results["protocol"]["references"] == lists
    files = [d["references"]["synthetic"]["files"] for d in results["draws"]]
    assert files[0]["ring"] == ["ring/train/good/000.png", "ring/train/good/002.png"]
    assert files[1]["cells"] == ["cells/train/good/001.png", "cells/train/good/001.png"]  # with replacement

    Path(lists[1]).write_text(Path(lists[1]).read_text() + "data/bottle/train/good/000.png\n")
    assert main(["run", str(experiment), *QUIET, *listed, f"run_dir={tmp_path}/a"]) == 2
    assert (
        "1 line(s) name no normal training image of any target, e.g. data/bottle" in capsys.readouterr().err
    )
    one_list = [
        "protocol.shots=2",
        "protocol.selection=listed",
        f"protocol.references=[{lists[0]}]",
        "protocol.draws=2",
    ]
    assert main(["run", str(experiment), *QUIET, *one_list, f"run_dir={tmp_path}/b"]) == 2
    assert "one reference list per draw: protocol.references has 1 file(s)" in capsys.readouterr().err
    unused = ["protocol.shots=2", f"protocol.references=[{lists[0]}]"]
    assert main(["run", str(experiment), *QUIET, *unused, f"run_dir={tmp_path}/c"]) == 2
    assert "set protocol.selection=listed" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")
