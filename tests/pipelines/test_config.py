"""Composition, overrides and the errors a user sees for bad configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datamodules.config import DataConfig
from datamodules.errors import ConfigError
from lightning_modules.anomalyclip import AnomalyCLIPConfig
from pipelines.config import compose, parse_override, source_label, to_object


def test_demo_composes_base_method_data_and_experiment():
    cfg = to_object(compose("demo"))
    assert isinstance(cfg.method, AnomalyCLIPConfig)
    assert cfg.method.backbone.name == "zsad-tiny-vit"
    assert cfg.method.lr == 1e-3 and cfg.method.betas == [0.5, 0.999]  # from the dataclass / method file
    assert isinstance(cfg.source, DataConfig) and cfg.source.train_split == "test"  # the zero-shot protocol
    assert cfg.source.root == "runs/synthetic/industrial"  # interpolated from output_dir (base.yaml)
    assert [t.root for t in cfg.targets] == ["runs/synthetic/vivid"]
    assert cfg.trainer.max_epochs == 15 and cfg.seed == 111


def test_every_method_has_a_tiny_demo_the_readme_names():
    """`zsad demo method=NAME_tiny` is each method's synthetic quick start (README, Quick start): its config
    composes with the demo for every registered method, and the README lists it."""
    from lightning_modules.registry import method_names

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in method_names():
        cfg = to_object(compose("demo", [f"method={name}_tiny"]))
        assert cfg.method.name == name and cfg.method.backbone.pretrained is None  # random weights, offline
        assert f"zsad demo method={name}_tiny" in readme, name


def test_overrides_are_typed_and_nested():
    cfg = to_object(
        compose(
            "demo", ["method.lr=0.01", "trainer.max_epochs=2", "targets.0.batch_size=3", "output_dir=/tmp/x"]
        )
    )
    assert cfg.method.lr == 0.01 and cfg.trainer.max_epochs == 2 and cfg.targets[0].batch_size == 3
    assert cfg.source.root == "/tmp/x/synthetic/industrial"


def test_group_overrides_pick_other_files():
    cfg = to_object(compose("demo", ["method=anomalyclip", "targets=[synthetic_source,synthetic_target]"]))
    assert cfg.method.backbone.name == "ViT-L-14-336-quickgelu" and cfg.method.backbone.image_size == 518
    assert [t.root.rsplit("/", 1)[-1] for t in cfg.targets] == ["industrial", "vivid"]


def test_data_root_variable_places_every_benchmark(tmp_path, monkeypatch):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("defaults: {method: anomalyclip, source: synthetic_source}\ndata_root: /datasets\n")
    cfg = to_object(compose(experiment, ["data_root=/scratch/data"]))
    assert cfg.data_root == "/scratch/data"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("method.lrr=1", "Key 'lrr' not in 'AnomalyCLIPConfig'. Did you mean: 'lr'?"),
        ("trainer.max_epochs=many", "could not be converted to Integer"),
        ("trainerr.max_epochs=1", "Key 'trainerr' not in 'ExperimentConfig'"),
        ("method=nonexistent", "no method config 'nonexistent'"),
        ("source=nowhere", "no data config 'nowhere'"),
        ("max_epochs", "not of the form key=value"),
        ("trainer.float32_matmul_precision=fast", "expected one of [highest, high, medium]"),
        ("eval.aupro_method=legacy_cflow", "Key 'aupro_method' not in 'EvalConfig'"),
        ("eval.pixel_score_dtype=bfloat16", "expected one of [float32, float16]"),
    ],
)
def test_config_errors_are_one_clear_line(override, fragment):
    with pytest.raises(ConfigError) as info:
        compose("demo", [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_typos_in_files_are_errors(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("defaults: {method: anomalyclip_tiny}\ntrainer: {max_epoch: 3}\n")
    with pytest.raises(ConfigError, match="max_epoch"):
        compose(experiment)
    experiment.write_text("defaults: {method: anomalyclip_tiny, sources: x}\n")
    with pytest.raises(ConfigError, match="unknown entries in defaults"):
        compose(experiment)
    experiment.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read"):
        compose(experiment)


def test_missing_required_values_are_reported(tmp_path):
    data_dir = tmp_path / "configs" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "rootless.yaml").write_text("name: mvtec\n")
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(f"defaults: {{method: anomalyclip_tiny, source: {data_dir / 'rootless.yaml'}}}\n")
    with pytest.raises(ConfigError, match="missing values for source.root"):
        compose(experiment)


def test_parse_override_values():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=[x,y]") == ("a", ["x", "y"])
    assert parse_override("a=/path/to/w.bin") == ("a", "/path/to/w.bin")
    assert Path(parse_override("a=runs/x")[1]) == Path("runs/x")


def test_several_sources_compose_into_a_list_with_shared_and_per_source_keys(tmp_path):
    """``source: [a, b]``: each data file as its own typed config; a key on ``source`` (experiment body
    or command line) sets every source, ``source.N.key`` one; name and root are per source only."""
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        "defaults: {method: adaclip_tiny, source: [mvtec, colondb], targets: [visa]}\n"
        "name: two\nsource: {batch_size: 1}\n"
    )
    cfg = to_object(compose(experiment, ["source.num_workers=0", "source.1.root=/data/colon"]))
    assert [(s.name, s.batch_size, s.num_workers) for s in cfg.source] == [("mvtec", 1, 0), ("colondb", 1, 0)]
    assert all(isinstance(s, DataConfig) for s in cfg.source) and cfg.source[1].root == "/data/colon"
    assert source_label(cfg) == "mvtec+colondb"
    assert source_label(to_object(compose("demo"))) == "synthetic"
    single = to_object(compose(experiment, ["source=[visa]"]))
    assert [s.name for s in single.source] == ["visa"] and single.source[0].batch_size == 1
    for override, fragment in (
        ("source.root=/x", "2 sources have one root each; set source.N.root"),
        ("source.1.nokey=1", "Key 'nokey' not in 'DataConfig'"),
        ("source.batch_size=many", "could not be converted to Integer"),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            compose(experiment, [override])
    experiment.write_text("defaults: {method: adaclip_tiny, source: [mvtec, colondb]}\nsource: {root: /x}\n")
    with pytest.raises(ConfigError, match="source.root cannot apply to every one of 2 sources"):
        compose(experiment)
