"""Several training sources as one training set: each source read by its own parser with its own
preprocessing, category ids kept (qualified where two sources share one), one resumable shuffled loader,
and one fingerprint of all training files (what checkpoints record)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from datamodules import AnomalyDataModule, DataConfig
from datamodules.dataset import AnomalyDataset
from datamodules.errors import ConfigError
from datamodules.fingerprint import changes
from datamodules.multi_source import MultiSourceDataModule
from datamodules.transforms import ImageMaskTransform, ImagePreprocessing


def _data(root: Path, **options) -> AnomalyDataModule:
    cfg = DataConfig(name="synthetic", root=str(root), **{"num_workers": 0, "batch_size": 4, **options})
    return AnomalyDataModule(cfg, image_size=32, preprocessing=ImagePreprocessing(), seed=11)


def test_each_source_keeps_its_preprocessing_and_shared_category_ids_are_qualified(
    synthetic_pair, shared_category_source
):
    source, _ = synthetic_pair
    first, second = _data(source), _data(shared_category_source, interpolation="bilinear")
    combined = MultiSourceDataModule([first, second])
    assert combined.keys == ["synthetic@industrial", "synthetic@industrial2"]
    assert combined.categories == [
        "synthetic@industrial:disc",
        "weave",
        "synthetic@industrial2:disc",
        "grain",
    ]
    assert combined.category_folders == ["disc", "weave", "disc", "grain"]
    assert combined.category_datasets == ["synthetic"] * 4
    dataset = combined.train_dataset()
    n_first = len(first.split_index("test").records)
    assert len(dataset) == n_first + len(second.split_index("test").records)
    # an item of the second source: its own bilinear resize, its category id in the combined list
    alone = AnomalyDataset(second.split_index("test"), ImageMaskTransform(second.transform_spec(train=True)))
    for local in (0, len(alone) - 1):
        item, expected = dataset[n_first + local], alone[local]
        assert torch.equal(item["image"], expected["image"]) and torch.equal(item["mask"], expected["mask"])
        folder = alone.categories[int(expected["category_id"])]
        assert combined.category_folders[int(item["category_id"])] == folder
        assert combined.category_datasets[int(item["category_id"])] == "synthetic"
        assert int(item["sample_id"]) == n_first + local
    assert dataset.transform_for(n_first).spec.preprocessing.interpolation == "bilinear"
    assert dataset.transform_for(0).spec.preprocessing.interpolation == "bicubic"
    assert [r.category for r in dataset.records[:n_first]] == [
        r.category for r in combined.split_index("x").records[:n_first]
    ]


def test_one_shuffled_order_over_all_sources_resumes_mid_epoch(synthetic_pair, shared_category_source):
    source, _ = synthetic_pair
    combined = MultiSourceDataModule([_data(source), _data(shared_category_source)], seed=11)
    loader = combined.train_dataloader()
    epoch = [batch["sample_id"].tolist() for batch in loader]
    assert sorted(i for b in epoch for i in b) == list(range(len(combined.train_dataset())))
    assert {len(b) for b in epoch[:-1]} == {4}
    resumed = combined.train_dataloader()
    resumed.load_state_dict({"epoch": 0, "batches": 2})
    assert [batch["sample_id"].tolist() for batch in resumed] == epoch[2:]


def test_sources_must_agree_on_what_one_loader_uses(synthetic_pair, shared_category_source):
    source, _ = synthetic_pair
    with pytest.raises(ConfigError, match="disagree on batch_size.*source.batch_size"):
        MultiSourceDataModule([_data(source), _data(shared_category_source, batch_size=1)])


def test_the_training_files_of_all_sources_form_one_fingerprint(synthetic_pair, shared_category_source):
    """What checkpoints record and a resume compares: every source's files, named below their common
    folder, so a change in any source shows."""
    source, _ = synthetic_pair
    combined = MultiSourceDataModule([_data(source), _data(shared_category_source)])
    fingerprint = combined.train_fingerprint
    parts = [p.train_fingerprint for p in combined.parts]
    assert len(fingerprint["files"]) == sum(len(p["files"]) for p in parts)
    assert Path(fingerprint["root"]) == Path(os.path.commonpath([source, shared_category_source]))
    name = Path(
        os.path.relpath(shared_category_source / "grain/test/good/000.png", fingerprint["root"])
    ).as_posix()
    assert fingerprint["files"][name] == parts[1]["files"]["grain/test/good/000.png"]
    changed = dict(fingerprint["files"])
    changed[name] = [1, 0, "0" * 64]
    assert changes(fingerprint, {**fingerprint, "files": changed})["changed"] == [name]


def test_each_source_keeps_its_training_augmentation(synthetic_pair, shared_category_source):
    """A source whose method augments there (the spec's train_augmentation) is augmented in the combined set
    too, per (seed, source, epoch, sample); the other source's items stay as they are."""
    from datamodules.augment import TrainAugmentation

    source, _ = synthetic_pair
    augmented = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(source), num_workers=0, batch_size=4),
        image_size=32,
        preprocessing=ImagePreprocessing(),
        seed=11,
        augmentation=TrainAugmentation("vcp_clip"),
    )
    combined = MultiSourceDataModule([augmented, _data(shared_category_source)], seed=11)
    dataset = combined.train_dataset()
    assert dataset.takes_epoch and combined.train_dataloader().sampler.with_epoch
    plain = MultiSourceDataModule([_data(source), _data(shared_category_source)], seed=11).train_dataset()
    first = len(augmented.train_dataset())
    for position in (0, first - 1):  # the augmented source: other pixels, another epoch other again
        item = dataset[(0, position)]
        assert not torch.equal(item["image"], plain[position]["image"])
        assert torch.equal(item["image"], dataset[(0, position)]["image"])
        assert not torch.equal(item["image"], dataset[(1, position)]["image"])
    for position in (first, len(dataset) - 1):  # the other source: as it is, whatever the epoch
        assert torch.equal(dataset[(3, position)]["image"], plain[position]["image"])


def test_a_sources_augmentations_do_not_depend_on_the_other_sources(synthetic_pair, shared_category_source):
    """Augmentation draws are seeded by (seed, the source's dataset and training images, epoch, sample), not by
    the source's position: put first, after another source or after a third one, it sees the same images."""
    from datamodules.augment import TrainAugmentation

    source, target = synthetic_pair

    def augmented() -> AnomalyDataModule:
        cfg = DataConfig(name="synthetic", root=str(source), num_workers=0, batch_size=4)
        return AnomalyDataModule(
            cfg,
            image_size=32,
            preprocessing=ImagePreprocessing(),
            seed=11,
            augmentation=TrainAugmentation("vcp_clip"),
        )

    first = MultiSourceDataModule([augmented(), _data(shared_category_source)], seed=11).train_dataset()
    n = len(augmented().train_dataset())
    for before in (_data(shared_category_source), _data(target)):
        offset = len(before.train_dataset())
        later = MultiSourceDataModule([before, augmented()], seed=11).train_dataset()
        for position in range(n):
            for epoch in (0, 2):
                assert torch.equal(
                    later[(epoch, offset + position)]["image"], first[(epoch, position)]["image"]
                )
