"""Cached frozen features (lightning_modules/feature_cache.py): identical features, identical training,
keys that change with what changes the features, the on-disk cache, and the bypasses (mosaic, flip).
Fits add the :class:`CachedTraining` callback with the datamodule, as the runner does for a method whose
spec has a feature cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from baselines_support import one_torch_thread, tiny_backbone  # noqa: F401 - autouse fixture

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.synthetic import generate_synthetic_dataset
from lightning_modules.anomalyclip import AnomalyCLIPModule
from lightning_modules.coop import CoOpConfig, CoOpModule
from lightning_modules.feature_cache import (
    CachedFeatureDataset,
    CachedTraining,
    FeatureTable,
    build_feature_table,
    cache_identity,
    cache_key,
    shard_indices,
)
from lightning_modules.method_spec import cache_settings
from lightning_modules.vand import VANDConfig, VANDModule
from tests_support import flip_a_bit_in_tensor_data, quiet_trainer, tiny_anomalyclip_config


def _datamodule(root, **overrides) -> AnomalyDataModule:
    cfg = DataConfig(
        name="synthetic", root=str(root), batch_size=4, eval_batch_size=5, num_workers=0, **overrides
    )
    return AnomalyDataModule(cfg, image_size=32)


def _fit(make_module, root, tmp_path, epochs: int = 2, seed: int = 7, **data_overrides):
    """(module, datamodule, the CachedTraining callback) after fitting as the runner does."""
    L.seed_everything(seed, verbose=False)
    module = make_module()
    datamodule = _datamodule(root, **data_overrides)
    cache = CachedTraining(datamodule, cache_settings(module.cfg))
    quiet_trainer(max_epochs=epochs, default_root_dir=tmp_path, callbacks=[cache]).fit(
        module, datamodule=datamodule
    )
    return module, datamodule, cache


def _trainable(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _assert_same_training(make_cached, make_uncached, root, tmp_path) -> None:
    cached, datamodule, cache = _fit(make_cached, root, tmp_path)
    assert cache.status == "cached (built)"
    assert isinstance(datamodule.train_dataloader().dataset, CachedFeatureDataset)
    uncached, _, cache = _fit(make_uncached, root, tmp_path)
    assert cache.status == "off"
    a, b = _trainable(cached), _trainable(uncached)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
    other_seed, _, _ = _fit(make_cached, root, tmp_path, seed=8)
    assert any(not torch.allclose(a[n], p) for n, p in _trainable(other_seed).items())


def test_cached_features_equal_encode_images(synthetic_pair):
    source, _ = synthetic_pair
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    datamodule = _datamodule(source)
    dataset = datamodule.train_dataset()
    table = build_feature_table(dataset, module.encode_for_cache, "k", {}, batch_size=5)
    assert len(table) == len(dataset) and table.masks.dtype == torch.bool
    assert table.features["image_embedding"].dtype == next(module.model.clip.parameters()).dtype
    first = [dataset[i] for i in range(5)]  # the same batch as the table's first encoder pass
    fresh = module.model.encode_images(torch.stack([item["image"] for item in first]))
    assert torch.equal(table.features["image_embedding"][:5], fresh.image_embedding)
    assert torch.equal(table.features["patch_6"][:5], fresh.patch_embeddings[6])
    for i, item in enumerate(first):
        assert torch.equal(table.masks[i].float(), item["mask"]) and table.labels[i] == item["label"]
    # A batch of cached items rebuilds the same ImageFeatures.
    rebuilt = module.model.features_from_tensors({k: v[:5] for k, v in table.features.items()})
    assert rebuilt.grid == fresh.grid and torch.equal(rebuilt.patch_embeddings[6], fresh.patch_embeddings[6])


def test_training_state_and_shuffling_are_unchanged_by_the_cache_pass(synthetic_pair):
    source, _ = synthetic_pair
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    torch.manual_seed(3)
    before = torch.get_rng_state()
    build_feature_table(_datamodule(source).train_dataset(), module.encode_for_cache, "k", {}, batch_size=4)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_anomalyclip_same_seed_same_prompts_cached_or_not(synthetic_pair, tmp_path):
    source, _ = synthetic_pair
    _assert_same_training(
        lambda: AnomalyCLIPModule(tiny_anomalyclip_config()),
        lambda: AnomalyCLIPModule(tiny_anomalyclip_config(cache_features=False)),
        source,
        tmp_path,
    )


@pytest.mark.slow
def test_vand_without_mosaic_same_heads_cached_or_not(synthetic_pair, tmp_path):
    source, _ = synthetic_pair
    _assert_same_training(
        lambda: VANDModule(VANDConfig(backbone=tiny_backbone(), feature_layers=[3, 6], mosaic_rate=0.0)),
        lambda: VANDModule(
            VANDConfig(backbone=tiny_backbone(), feature_layers=[3, 6], mosaic_rate=0.0, cache_features=False)
        ),
        source,
        tmp_path,
    )


@pytest.mark.slow
def test_coop_same_seed_same_context_cached_or_not(synthetic_pair, tmp_path):
    source, _ = synthetic_pair
    _assert_same_training(
        lambda: CoOpModule(CoOpConfig(backbone=tiny_backbone())),
        lambda: CoOpModule(CoOpConfig(backbone=tiny_backbone(), cache_features=False)),
        source,
        tmp_path,
    )


@pytest.mark.slow
def test_vand_mosaic_bypasses_the_cache_and_says_why(synthetic_pair, tmp_path, caplog):
    source, _ = synthetic_pair
    with caplog.at_level(logging.INFO):
        _, datamodule, cache = _fit(
            lambda: VANDModule(VANDConfig(backbone=tiny_backbone(), feature_layers=[3, 6], mosaic_rate=0.5)),
            source,
            tmp_path,
            epochs=1,
        )
    assert cache.status.startswith("bypassed: VAND's mosaic")
    assert datamodule.cached_train_features is None
    assert sum("feature cache not used" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_random_flip_bypasses_the_cache(synthetic_pair, tmp_path):
    source, _ = synthetic_pair
    _, datamodule, cache = _fit(
        lambda: AnomalyCLIPModule(tiny_anomalyclip_config()), source, tmp_path, epochs=1, hflip_p=0.5
    )
    assert "horizontal flip" in cache.status and datamodule.cached_train_features is None


@pytest.mark.slow
def test_disk_cache_is_reused_without_encoding(synthetic_pair, tmp_path, monkeypatch, caplog):
    source, _ = synthetic_pair
    cache_dir = tmp_path / "cache"

    def make():
        return AnomalyCLIPModule(tiny_anomalyclip_config(cache_dir=str(cache_dir)))

    first, _, cache = _fit(make, source, tmp_path, epochs=1)
    files = list(cache_dir.glob("anomalyclip-*.pt"))
    assert cache.status == "cached (built)" and len(files) == 1

    def no_encoding(self, images):
        raise AssertionError("the image encoder ran although the disk cache holds every feature")

    monkeypatch.setattr(AnomalyCLIPModule, "encode_for_cache", no_encoding)
    # a saved table is memory-mapped, not copied into the process: the in-memory size limit does not apply
    second, _, cache = _fit(
        lambda: AnomalyCLIPModule(tiny_anomalyclip_config(cache_dir=str(cache_dir), cache_max_gb=1e-6)),
        source,
        tmp_path,
        epochs=1,
    )
    assert cache.status.startswith("cached (loaded")
    for (name, a), (_, b) in zip(_trainable(first).items(), _trainable(second).items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)

    # a table damaged on disk (one bit of its features) is refused by its CRC-32s, named, and rebuilt
    flip_a_bit_in_tensor_data(files[0])
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        third, _, cache = _fit(make, source, tmp_path, epochs=1)
    assert cache.status == "cached (built)"
    assert f"not using the feature cache {files[0]}" in caplog.text and "CRC-32" in caplog.text
    for (name, a), (_, b) in zip(_trainable(first).items(), _trainable(third).items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert len(FeatureTable.load(files[0])) == 14  # rewritten whole: its CRC-32s match again


def test_cache_key_changes_with_what_changes_the_features(synthetic_pair, tmp_path, monkeypatch):
    source, target = synthetic_pair
    weights_file = tmp_path / "weights.pt"
    weights_file.write_bytes(b"weights")

    class FakeTrainer:
        precision = "32-true"

    def key(
        cfg_overrides=None,
        root=source,
        image_size=32,
        precision="32-true",
        weights=None,
        matmul="highest",
        **data,
    ):
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: matmul)
        module = AnomalyCLIPModule(tiny_anomalyclip_config(**(cfg_overrides or {})))
        module.cfg.backbone.pretrained = weights  # only the identity is computed: no weights are loaded
        trainer = FakeTrainer()
        trainer.precision = precision
        module._trainer = trainer
        datamodule = _datamodule(root, **data)
        datamodule.image_size = image_size
        return cache_key(cache_identity(module, datamodule))

    base = key()
    assert key() == base  # deterministic
    changed = [
        key({"map_layers": [5]}),
        key({"dpam_start_block": 3}),
        key({"image_embedding_ln_post": True}),
        key(root=target),
        key(image_size=64),
        key(mask_interpolation="nearest"),
        key(train_split="train"),
        key(precision="bf16-mixed"),
        key(matmul="high"),  # TF32 products
        key(weights="openai"),
        key(weights=str(weights_file)),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    weights_file.write_bytes(b"other weights, same path")  # a replaced file (size/mtime) is other weights
    os.utime(weights_file, ns=(1, 1))
    assert key(weights=str(weights_file)) != changed[-1]
    assert key({"lr": 0.1, "prompt_length": 4}) == base  # trainable-side settings do not change features

    # the dataset regenerated at the same root: other images, another key; the same images written
    # again (new modification times, same bytes) keep it (their contents are hashed)
    root = tmp_path / "data"
    kept = key(root=_synthesize(root, seed=3))
    assert key(root=_synthesize(root, seed=4)) != kept
    assert key(root=_synthesize(root, seed=3)) == kept


def _synthesize(root: Path, seed: int) -> Path:
    """``zsad data synth --overwrite`` at ``root``: the synthetic source's layout, drawn from ``seed``."""
    kwargs = dict(image_size=32, n_train=1, n_test_good=3, n_test_defect_per_kind=1, overwrite=True)
    return generate_synthetic_dataset(
        root, seed=seed, style="industrial", categories=["disc", "weave"], **kwargs
    ).root


@pytest.mark.slow
def test_a_shared_cache_is_not_reused_for_a_dataset_regenerated_at_the_same_root(tmp_path):
    cache_dir, root = tmp_path / "cache", _synthesize(tmp_path / "data", seed=3)

    def make():
        return AnomalyCLIPModule(tiny_anomalyclip_config(cache_dir=str(cache_dir)))

    _, _, first = _fit(make, root, tmp_path, epochs=1)
    _synthesize(root, seed=4)
    second, _, cache = _fit(make, root, tmp_path, epochs=1)
    assert (first.status, cache.status) == ("cached (built)", "cached (built)")
    assert len(list(cache_dir.glob("anomalyclip-*.pt"))) == 2
    uncached, _, _ = _fit(
        lambda: AnomalyCLIPModule(tiny_anomalyclip_config(cache_features=False)), root, tmp_path, epochs=1
    )
    for (name, a), (_, b) in zip(_trainable(second).items(), _trainable(uncached).items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)  # trained on the new images


def test_memory_limit_reason_uses_the_setting_or_half_the_available_memory(monkeypatch):
    from lightning_modules import feature_cache

    gib = 2**30
    assert feature_cache.memory_limit_reason(3 * gib, max_gb=4.0, processes=8) is None
    assert "above method.cache_max_gb=2.0" in feature_cache.memory_limit_reason(
        3 * gib, max_gb=2.0, processes=1
    )
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 16 * gib)
    assert feature_cache.memory_limit_reason(3 * gib, None, processes=2) is None  # 6 of 16 GiB
    reason = feature_cache.memory_limit_reason(3 * gib, None, processes=4)  # 12 of 16 GiB
    assert "3.0 GiB per process x 4" in reason and "16.0 GiB available" in reason
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: None)
    assert feature_cache.memory_limit_reason(10**15, None, processes=1) is None  # unknown: no guess


def test_size_estimate_matches_the_built_table(synthetic_pair):
    from lightning_modules.feature_cache import estimate_table_bytes

    source, _ = synthetic_pair
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    dataset = _datamodule(source).train_dataset()
    table = build_feature_table(dataset, module.encode_for_cache, "k", {})
    small_fields = sum(
        t.numel() * t.element_size() for t in (table.labels, table.category_ids, table.has_mask)
    )
    assert (
        estimate_table_bytes(dataset, module.encode_for_cache, torch.device("cpu"))
        == table.nbytes() - small_fields
    )


@pytest.mark.slow
def test_a_table_too_large_for_memory_is_bypassed_and_training_still_runs(synthetic_pair, tmp_path, caplog):
    source, _ = synthetic_pair
    with caplog.at_level(logging.INFO):
        module, datamodule, cache = _fit(
            lambda: AnomalyCLIPModule(tiny_anomalyclip_config(cache_max_gb=1e-6)), source, tmp_path, epochs=1
        )
    assert cache.status.startswith("bypassed: the feature table would take")
    assert "method.cache_max_gb=1e-06" in cache.status
    assert datamodule.cached_train_features is None and module.trainer.current_epoch == 1


def test_shard_indices_cover_every_sample_once_with_equal_padded_shares():
    shares = [shard_indices(7, rank, 3) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 6], [2, 5, 6]]  # 7 = 3 x 3 - 2: two padding rows repeat index 6
    assert sorted({i for share in shares for i in share}) == list(range(7))
    assert shard_indices(5, 0, 1) == list(range(5))


class RecordingAnomalyCLIP(AnomalyCLIPModule):
    """Counts the images its encoder sees for the cache and saves, per process, the table it trained on."""

    def __init__(self, cfg, out_dir: str) -> None:
        super().__init__(cfg)
        self.out_dir = out_dir
        self.images_encoded = 0

    def encode_for_cache(self, images):
        self.images_encoded += len(images)
        return super().encode_for_cache(images)

    def on_train_start(self) -> None:
        table = self.trainer.datamodule.cached_train_features.table
        mapped = Path("/proc/self/maps").read_text()
        (cache,) = [c for c in self.trainer.callbacks if isinstance(c, CachedTraining)]
        record = {
            "images_encoded": self.images_encoded,
            "status": cache.status,
            "table": table,
            "maps_the_cache_file": any(f"anomalyclip-{table.key}.pt" in line for line in mapped.splitlines()),
        }
        torch.save(record, Path(self.out_dir, f"rank{self.global_rank}.pt"))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_ddp_processes_share_the_cache_build_and_train_as_without_it(synthetic_pair, tmp_path):
    source, _ = synthetic_pair
    data = dict(categories=["disc"])  # 7 training images over 2 processes: one padding row

    def fit(make_module) -> dict[str, torch.Tensor]:
        L.seed_everything(7, verbose=False)
        module = make_module()
        datamodule = _datamodule(source, **data)
        cache = CachedTraining(datamodule, cache_settings(module.cfg))
        trainer = quiet_trainer(
            max_epochs=2, default_root_dir=tmp_path, strategy="ddp_spawn", devices=2, callbacks=[cache]
        )
        trainer.fit(module, datamodule=datamodule)
        return _trainable(module)  # ddp_spawn hands rank 0's trained weights back to this process

    cache_dir = str(tmp_path / "cache")
    cached = fit(lambda: RecordingAnomalyCLIP(tiny_anomalyclip_config(cache_dir=cache_dir), str(tmp_path)))
    uncached = fit(lambda: AnomalyCLIPModule(tiny_anomalyclip_config(cache_features=False)))
    for name in cached:
        torch.testing.assert_close(cached[name], uncached[name], atol=1e-5, rtol=1e-4, msg=name)

    L.seed_everything(7, verbose=False)  # the same random tiny CLIP as the trained one
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    dataset = _datamodule(source, **data).train_dataset()
    expected = build_feature_table(dataset, module.encode_for_cache, "k", {}, batch_size=5)
    assert len(expected) == 7
    for rank in (0, 1):
        record = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        # each process encoded its 4 images (one a padding repeat) and one sample for the size estimate
        assert record["status"] == "cached (built)" and record["images_encoded"] == 4 + 1
        # after rank 0 saved the table, both processes train on the memory-mapped file: one copy per node
        assert record["maps_the_cache_file"]
        table = record["table"]
        assert table.image_paths == expected.image_paths
        for field in ("masks", "labels", "category_ids", "has_mask"):
            assert torch.equal(getattr(table, field), getattr(expected, field)), field
        assert table.features.keys() == expected.features.keys()
        for name, values in expected.features.items():
            torch.testing.assert_close(table.features[name], values, atol=1e-6, rtol=1e-5, msg=name)
