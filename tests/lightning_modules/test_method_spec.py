"""Published numbers follow the setting (``MethodSpec.published_for``): a method's paper numbers stand beside
runs of the authors' settings (every experiment of the method composes to them), none beside a switched one."""

from __future__ import annotations

import dataclasses

import pytest

from lightning_modules.method_spec import PublishedNumbers, flatten, published_at_defaults
from lightning_modules.registry import get_method
from pipelines.config import compose, to_object

#: methods whose numbers stand beside their defaults only, an experiment of each, and a switch off the authors'
#: value that a user may set
AT_DEFAULTS = {
    "anomalyclip": (("anomalyclip_mvtec_to_visa", "anomalyclip_visa_to_mvtec"), ("gaussian_sigma", 0.0)),
    "adaclip": (("adaclip_mvtec_colondb_to_all", "adaclip_all_datasets"), ("per_image_test", False)),
    "bayes_pfl": (("bayes_pfl_mvtec_to_all", "bayes_pfl_visa_to_mvtec"), ("test_samples", 1)),
    "adaptclip": (("adaptclip_mvtec_to_all", "adaptclip_visa_to_mvtec"), ("pq_context", False)),
    "vand": (("vand_mvtec_to_all", "vand_visa_to_mvtec"), ("mosaic_rate", 0.5)),
    "vcp_clip": (("vcp_clip_mvtec_to_visa", "vcp_clip_visa_to_mvtec"), ("lr", 1e-3)),
    "clip": (("clip_all",), ("backbone.image_size", 224)),
    "winclip": (("winclip_all",), ("backbone.name", "ViT-B-16")),
}
#: experiments that are deliberately not a setting of the method's published numbers
NOT_THE_PAPERS = {
    "demo": "a tiny random-weight model",
    "anomalydino_mvtec_visa": "anomalib's setting",
    # its paper's batched zero-shot table was not readable from a stored source: no numbers attached
    "anomalydino_batched_mvtec_visa": "batched zero-shot, no published numbers in zsad",
    # their demo model, trained on all 14 datasets (MVTec AD among them): not the paper's zero-shot direction
    "adaclip_all_datasets": "trained on its target",
}


@pytest.mark.parametrize("method", sorted(AT_DEFAULTS))
def test_the_papers_numbers_stand_beside_the_authors_settings_only(method):
    experiments, (key, value) = AT_DEFAULTS[method]
    spec = get_method(method)
    for experiment in experiments:
        settings = flatten(dataclasses.asdict(to_object(compose(experiment)).method))
        assert spec.published_numbers(settings) is spec.published, experiment
        assert settings[key] != value
        assert spec.published_numbers({**settings, key: value}) is None, (experiment, key)
    tiny = flatten(dataclasses.asdict(to_object(compose("demo", [f"method={method}_tiny"])).method))
    assert spec.published_numbers(tiny) is None  # a random-weight tiny model is no setting of the paper


def test_published_at_defaults_ignores_what_changes_no_number_and_knows_released_files():
    @dataclasses.dataclass
    class Backbone:
        name: str = "ViT-L-14-336-quickgelu"
        pretrained: str = "openai"

    @dataclasses.dataclass
    class Config:
        backbone: Backbone = dataclasses.field(default_factory=Backbone)
        lr: float = 0.001
        cache_dir: str | None = None

    numbers = PublishedNumbers("paper", {"mvtec": {"image_auroc": 0.9}})
    published_for = published_at_defaults(
        numbers, Config, ignore=("cache_dir",), files={"backbone.pretrained": "ViT-L-14-336px.pt"}
    )
    assert published_for({}) is numbers and published_for({"lr": 0.001, "cache_dir": "/c"}) is numbers
    assert published_for({"backbone.pretrained": "/weights/ViT-L-14-336px.pt"}) is numbers
    assert (
        published_for({"lr": 0.01}) is None and published_for({"backbone.pretrained": "/w/other.pt"}) is None
    )
    assert published_for({"backbone.name": "ViT-B-16"}) is None
    assert published_for({"unknown.key": 1}) is numbers  # keys of other versions: not this config's
    scripted = published_at_defaults(numbers, Config, also={"lr": (0.002,)})
    assert scripted({"lr": 0.002}) is numbers and scripted({"lr": 0.003}) is None


def test_every_experiment_of_a_method_with_published_numbers_gets_them():
    """The experiments are the authors' protocols: each composes to a setting its method's published numbers
    stand beside (`zsad report --reference`), trained in the paper's direction and for its epochs for each of
    its targets with numbers (`PublishedNumbers.trained_on`, `epochs`), except the ones named in
    NOT_THE_PAPERS."""
    from pipelines.config import config_dir, source_label

    missing = []
    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        cfg = to_object(compose(path.stem))
        spec = get_method(cfg.method.name)
        if spec.published is None or path.stem in NOT_THE_PAPERS:
            continue
        numbers = spec.published_numbers(flatten(dataclasses.asdict(cfg.method)))
        if numbers is None:
            missing.append(path.stem)
            continue
        source = source_label(cfg) if spec.trains else None
        epochs = cfg.trainer.max_epochs if spec.trains else None
        for target in cfg.targets:
            if target.name in numbers.results and not numbers.measured_after(target.name, source, epochs):
                missing.append(f"{path.stem}: {target.name} after {source}, {epochs} epochs")
    assert missing == []


def test_every_measured_at_names_keys_of_its_config():
    """``MeasuredAt``'s ``ignore``, ``files`` and ``also`` are tuples/maps of keys of the method's config: a
    bare string (``("key")``) would be read as a substring test, and a misspelt key would silently check
    nothing."""
    from lightning_modules.registry import BUILTIN_METHODS

    for spec in BUILTIN_METHODS:
        if spec.published_at is None:
            continue
        keys = set(flatten(dataclasses.asdict(spec.config_class())))
        at = spec.published_at
        assert isinstance(at.ignore, tuple), (spec.name, at.ignore)
        named = [*at.ignore, *at.files, *at.also]
        assert [k for k in named if k not in keys] == [], spec.name
        assert all(isinstance(v, tuple) for v in at.also.values()), spec.name
