"""A few-shot training set (``source.train_shots``, AA-CLIP's K-shot training): K/2 normal and K/2 anomalous
images per category of the training split, seeded and reproducible per category, recorded by the training
fingerprint, refused in one line where a category cannot give them."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import ConfigError
from datamodules.index import build_index
from datamodules.multi_source import MultiSourceDataModule
from datamodules.synthetic import generate_synthetic_dataset
from datamodules.training_shots import training_shots
from pipelines.config import compose, source_configs, to_object
from pipelines.runner import _source_record

CATEGORIES = ["ring", "cells"]


@pytest.fixture()
def root(tmp_path) -> Path:
    kwargs = dict(seed=5, image_size=32, n_train=2, n_test_good=4, n_test_defect_per_kind=2)
    return generate_synthetic_dataset(tmp_path / "d", style="vivid", categories=CATEGORIES, **kwargs).root


def drawn(root: Path, shots: int, seed: int = 0, categories=CATEGORIES) -> list[str]:
    index = build_index("synthetic", root).select(split="test", categories=categories)
    return [r.image_path.relative_to(root).as_posix() for r in training_shots(index, shots, seed).records]


def test_each_category_gives_half_normal_half_anomalous_images_seeded_per_category(root):
    test_split = build_index("synthetic", root).select(split="test")
    files = drawn(root, 4)
    labels = {r.image_path.relative_to(root).as_posix(): (r.category, r.label) for r in test_split.records}
    assert collections.Counter(labels[f] for f in files) == {
        (c, lab): 2 for c in CATEGORIES for lab in (0, 1)
    }
    assert files == drawn(root, 4)  # reproducible
    assert drawn(root, 4, categories=["cells"]) == [f for f in files if f.startswith("cells/")]
    assert any(drawn(root, 4, seed=s) != files for s in range(1, 6))  # the seed moves the draw
    order = [r.image_path.relative_to(root).as_posix() for r in test_split.records]
    assert files == sorted(files, key=order.index)  # the split's order is kept


def test_adding_normal_images_does_not_move_the_anomalous_draw(root):
    """One stream per label: a category's anomalous images stay when its normal pool grows (a copy with
    more normal images) and the other way round."""
    import shutil

    before = drawn(root, 4)
    good = root / "ring" / "test" / "good"
    for i, image in enumerate(sorted(good.iterdir())):
        shutil.copyfile(image, good / f"extra_{i}.png")
    after = drawn(root, 4)
    anomalous = [f for f in before if "/good/" not in f]
    assert anomalous == [f for f in after if "/good/" not in f]
    assert [f for f in before if f.startswith("cells/")] == [f for f in after if f.startswith("cells/")]


def test_odd_or_too_many_shots_are_refused_in_one_line(root):
    with pytest.raises(ConfigError, match="even number"):
        drawn(root, 3)
    records = build_index("synthetic", root).records
    n_good = sum(1 for r in records if r.split == "test" and r.label == 0 and r.category == "cells")
    with pytest.raises(
        ConfigError, match=rf"category 'cells' .* {n_good} normal images .* {n_good + 1} needed"
    ):
        drawn(root, 2 * n_good + 2)


def test_datamodule_trains_on_the_draw_and_its_fingerprint_and_cache_key_say_so(root):
    def module(shots):
        cfg = DataConfig(name="synthetic", root=str(root), num_workers=0, train_shots=shots)
        return AnomalyDataModule(cfg, image_size=32)

    full, few = module(None), module(2)
    assert len(few.train_dataset()) == 2 * len(CATEGORIES) < len(full.train_dataset())
    images = {r.image_path.relative_to(root).as_posix() for r in full.train_index.records}
    assert images & set(few.train_fingerprint["files"]) == set(drawn(root, 2))  # (masks are listed too)
    assert few.train_fingerprint["digest"] != full.train_fingerprint["digest"]
    assert few.train_cache_identity() != full.train_cache_identity()
    assert len(few.test_index.records) == len(full.test_index.records)  # evaluation is untouched

    both = MultiSourceDataModule([few, module(None)])
    assert len(both.train_index.records) == 2 * len(CATEGORIES) + len(full.train_index.records)


def test_override_reaches_the_source_and_results_record_it():
    cfg = to_object(compose("aa_clip_visa_to_all", ["source.train_shots=16"]))
    (source,) = source_configs(cfg)
    record = _source_record(source)
    assert record["train_shots"] == 16 and record["train_shots_seed"] == 0 and record["dataset"] == "visa"
    assert "train_shots" not in _source_record(source_configs(to_object(compose("aa_clip_visa_to_all")))[0])
