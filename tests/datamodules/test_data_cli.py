"""``zsad data list`` and ``zsad data check``: readable tables, every problem with its path, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import pytest
from PIL import Image

from datamodules import cli, index
from datamodules.index import get_dataset_spec

BENCHMARKS = [
    "mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd", "isic", "clinicdb",
    "colondb", "kvasir", "endo", "tn3k", "headct", "brainmri", "br35h", "covid",
]  # fmt: skip
# The benchmarks of 2025-2026 papers (issue 27): most have no confirmed expected counts.
NEW_BENCHMARKS = ["mvtec_ad2", "realiad", "mvtec_loco", "bmad", "autovi", "ksdd2"]


def _run_list(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_list_arguments(parser)
    return cli.run_list(parser.parse_args(list(argv)))


def _run_check(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_check_arguments(parser)
    return cli.run_check(parser.parse_args(list(argv)))


@pytest.fixture
def mvtec_counts_of_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend MVTec's expected counts are the fake's, so a clean fake passes ``check``."""
    spec = get_dataset_spec("mvtec")
    fake = {"bottle": (2, 4), "metal_nut": (2, 3)}
    monkeypatch.setitem(
        index._REGISTRY, "mvtec", dataclasses.replace(spec, categories=tuple(fake), expected_test_counts=fake)
    )


def test_all_17_registered_with_flags() -> None:
    for name in BENCHMARKS:
        spec = get_dataset_spec(name)
        assert spec.categories and spec.domain in ("industrial", "medical") and spec.description
        assert spec.expected_total() is not None
    no_normals = {n for n in BENCHMARKS if not get_dataset_spec(n).has_normals}
    no_masks = {n for n in BENCHMARKS if not get_dataset_spec(n).has_masks}
    assert no_normals == {"isic", "clinicdb", "colondb", "kvasir", "endo", "tn3k"}
    assert no_masks == {"headct", "brainmri", "br35h", "covid"}


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_list() == 0
    out = capsys.readouterr().out
    for name in BENCHMARKS:
        assert f"\n{name} " in out or out.startswith(name)
    assert "467 / 1258" in out and "962 / 1200" in out and "451 / 290 [verify]" in out
    assert "Blotchy_099" in out and "raw-thirds" in out and "options: normal, anomalous" in out
    assert _run_list("covid") == 0
    assert "mvtec" not in capsys.readouterr().out


def test_check_ok(
    fake_mvtec: Path, mvtec_counts_of_the_fake: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_check("mvtec", "--root", str(fake_mvtec)) == 0
    out = capsys.readouterr().out
    assert "OK: 15 images checked" in out
    assert "bottle" in out and "total" in out and "MISMATCH" not in out
    assert _run_check("mvtec", "--root", str(fake_mvtec), "--decode", "--categories", "bottle") == 0


def test_check_decodes_small_datasets_by_default(
    fake_mvtec: Path, mvtec_counts_of_the_fake: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated PNG has a valid header: only decoding finds it, and a check that did not decode says so."""
    image = fake_mvtec / "bottle" / "test" / "good" / "001.png"
    image.write_bytes(image.read_bytes()[:-40])
    assert _run_check("mvtec", "--root", str(fake_mvtec)) == 1
    out = capsys.readouterr().out
    assert "cannot decode" in out and "good/001.png" in out and "every image and mask decoded" in out
    assert _run_check("mvtec", "--root", str(fake_mvtec), "--no-decode") == 0
    assert "headers only" in capsys.readouterr().out
    monkeypatch_limit = pytest.MonkeyPatch()
    monkeypatch_limit.setattr(cli, "DECODE_AUTO_MAX_IMAGES", 3)  # larger datasets: headers only, said so
    try:
        assert _run_check("mvtec", "--root", str(fake_mvtec)) == 0
    finally:
        monkeypatch_limit.undo()
    assert (
        "files not decoded: a truncated file passes; --decode decodes every file" in capsys.readouterr().out
    )


def test_other_data_in_mvtec_layout_is_mvtec_layout_everywhere(
    fake_mvtec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mvtec` means MVTec AD in data check, runs and evaluate-maps; other categories are `mvtec_layout`."""
    from pipelines import evaluate_maps

    for category in ("bottle", "metal_nut"):
        (fake_mvtec / category).rename(fake_mvtec / f"my_{category}")
    assert _run_check("mvtec", "--root", str(fake_mvtec)) == 1
    assert "none of MVTec AD's categories" in capsys.readouterr().out
    assert _run_check("mvtec_layout", "--root", str(fake_mvtec)) == 0
    out = capsys.readouterr().out
    assert "my_bottle" in out and "OK: 15 images checked" in out
    maps = fake_mvtec.parent / "no_maps"
    maps.mkdir()
    assert evaluate_maps.main(["--maps", str(maps), "--gt-root", str(fake_mvtec), "--dataset", "mvtec"]) == 2
    err = capsys.readouterr().err
    assert "none of MVTec AD's classes" in err and "--dataset mvtec_layout" in err


def test_check_reports_every_problem(
    fake_mvtec: Path,
    mvtec_counts_of_the_fake: None,
    image_writer,
    mask_writer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bottle = fake_mvtec / "bottle"
    mask_writer(bottle / "ground_truth" / "broken_large" / "000_mask.png", size=(16, 24))  # transposed
    (bottle / "test" / "good" / "001.png").write_bytes(b"not an image")
    mask_writer(bottle / "ground_truth" / "contamination" / "042_mask.png")  # no image
    (fake_mvtec / "stray").mkdir()
    assert _run_check("mvtec", "--root", str(fake_mvtec)) == 1
    out = capsys.readouterr().out
    assert "000_mask.png is 16x24 but image" in out and "000.png is 24x16" in out
    assert "cannot decode" in out and "good/001.png" in out  # small datasets are decoded by default
    assert "042_mask.png has no image" in out
    assert "ignored folder" in out and "stray" in out
    assert "FAILED: 3 error(s), 1 warning(s)" in out


def test_check_counts_against_expected(fake_mvtec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_check("mvtec", "--root", str(fake_mvtec)) == 1
    out = capsys.readouterr().out
    assert "bottle: 2 normal / 4 anomalous test images, expected 20 / 63" in out
    assert "13 categories missing under" in out and "carpet, grid" in out
    assert "MISMATCH" in out


def test_unverified_counts_only_warn(fake_btad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_check("btad", "--root", str(fake_btad)) == 0
    out = capsys.readouterr().out
    assert "expected 21 / 49 (expected counts not confirmed [verify])" in out and "OK" in out


def test_check_layout_errors_are_listed(fake_isic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = fake_isic / "ISBI2016_ISIC_Part1_Test_GroundTruth"
    for p in list(gt.iterdir())[:2]:
        p.unlink()
    assert _run_check("isic", "--root", str(fake_isic)) == 1
    out = capsys.readouterr().out
    assert out.count("no mask for") == 2 and "FAILED: 2 error(s)" in out
    shutil.rmtree(fake_isic)
    assert _run_check("isic", "--root", str(fake_isic)) == 1
    assert "does not exist" in capsys.readouterr().out


def test_check_options_and_unknown_names(fake_covid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_check("covid", "--root", str(fake_covid), "--option", "anomalous=COVID,Lung_Opacity") == 0
    out = capsys.readouterr().out
    assert "version: normal=Normal;anomalous=COVID+Lung_Opacity" in out and "?" in out
    assert _run_check("nosuch", "--root", str(fake_covid)) == 1
    assert "unknown dataset 'nosuch'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _run_check("covid", "--root", str(fake_covid), "--option", "anomalous")


def test_check_masks_of_a_palette_dataset(fake_visa: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask = next((fake_visa / "pcb1" / "Data" / "Masks" / "Anomaly").iterdir())
    Image.new("P", (23, 16)).save(mask)
    assert _run_check("visa", "--root", str(fake_visa), "--categories", "pcb1") == 1
    assert "is 23x16 but image" in capsys.readouterr().out


def test_new_benchmarks_registered() -> None:
    for name in NEW_BENCHMARKS:
        spec = get_dataset_spec(name)
        assert spec.categories and spec.has_masks and spec.has_normals and spec.description
    assert get_dataset_spec("bmad").domain == "medical"
    assert get_dataset_spec("realiad").option_names() == ["version", "resolution"]
    assert get_dataset_spec("mvtec_loco").categories_of("object") == (
        "breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "fixture", "categories", "options"),
    [
        ("realiad", "fake_realiad", "audiojack,zipper", ()),
        ("mvtec_loco", "fake_mvtec_loco", "breakfast_box_logical,breakfast_box_structural", ()),
        ("mvtec_loco", "fake_mvtec_loco", "pushpins", ("--option", "rows=object")),
        ("bmad", "fake_bmad", "Brain,Liver,Chest", ()),
        ("autovi", "fake_autovi", "engine_wiring,pipe_clip", ()),
        ("ksdd2", "fake_ksdd2", None, ()),
    ],
)
def test_check_new_layouts(
    name: str, fixture: str, categories: str | None, options: tuple, request, capsys
) -> None:
    """A clean copy of each new layout passes `zsad data check` (shared good images of LOCO's two rows and
    mask folders included); unknown expected counts show as '?'."""
    root = request.getfixturevalue(fixture)
    argv = [name, "--root", str(root), *options, *(["--categories", categories] if categories else [])]
    assert _run_check(*argv) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "every image and mask decoded" in out and "?" in out


def test_check_mvtec_ad2_counts_private_sets(fake_mvtec_ad2: Path, capsys) -> None:
    assert _run_check("mvtec_ad2", "--root", str(fake_mvtec_ad2), "--categories", "can") == 1
    out = capsys.readouterr().out
    assert "can/test_private holds 2 images, MVTec's upload checker expects 321" in out


@pytest.mark.parametrize("name", BENCHMARKS + NEW_BENCHMARKS)
def test_data_configs(name: str, tmp_path: Path) -> None:
    """configs/data/<name>.yaml: the DataConfig keys, a registered name, the root under ${data_root}."""
    from omegaconf import OmegaConf

    from datamodules.config import DataConfig

    path = Path(__file__).resolve().parents[2] / "configs" / "data" / f"{name}.yaml"
    text = path.read_text()
    comment = text.split("\nname:")[0]
    assert comment.startswith("#") and ("http" in comment or name == "dtd")  # says where to get the data
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(path))
    cfg = OmegaConf.create({"data_root": str(tmp_path), "data": data}).data
    assert cfg.name == name and cfg.train_split == "test"
    assert cfg.root.startswith(str(tmp_path) + "/")
    get_dataset_spec(cfg.name)
    spec_options = get_dataset_spec(name).option_names()
    assert set(cfg.options) <= set(spec_options)
