"""CMG on the tiny random-weight CLIP: texts, CMER caching, training, inference and checkpoints."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import ConfigError, ZsadError
from datamodules.synthetic import generate_synthetic_dataset
from lightning_modules.clip.config import BackboneConfig
from lightning_modules.cmg import CMG, CMGConfig, CMGModule
from lightning_modules.cmg.config import CMERConfig, CMLEConfig, DetectorConfig
from lightning_modules.cmg.texts import ImageTexts, load_captions
from tests_support import quiet_trainer


def tiny_cmg_config(**overrides) -> CMGConfig:
    """As configs/method/cmg_tiny.yaml: 32 px (4x4 tokens), CMER on a 2x2 grid, CMLE with k = 3."""
    cfg = CMGConfig(
        backbone=BackboneConfig(name="zsad-tiny-vit", pretrained=None, image_size=32),
        detector=DetectorConfig(feature_layers=[2, 4], hidden_dim=64, latent_dim=16, gaussian_sigma=1.0),
        cmer=CMERConfig(grid=2, cache_dir=None),
        cmle=CMLEConfig(k=3),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def cmg_dataset(tmp_path_factory):
    """Three categories with four normal training images each (unified training needs several classes)."""
    root = tmp_path_factory.mktemp("cmg") / "data"
    generate_synthetic_dataset(
        root, style="industrial", categories=["disc", "plate", "weave"], seed=4, image_size=32,
        n_train=4, n_test_good=2, n_test_defect_per_kind=1,
    )  # fmt: skip
    return root


def _datamodule(root, batch_size: int = 6) -> AnomalyDataModule:
    cfg = DataConfig(
        name="synthetic",
        root=str(root),
        train_split="train",
        batch_size=batch_size,
        eval_batch_size=8,
        num_workers=0,
    )
    return AnomalyDataModule(cfg, image_size=32)


def _module(tiny_clip, cfg: CMGConfig | None = None) -> CMGModule:
    cfg = cfg or tiny_cmg_config()
    return CMGModule(cfg, model=CMG(cfg, *tiny_clip))


def _trainer(tmp_path, epochs: int) -> L.Trainer:
    return quiet_trainer(max_epochs=epochs, default_root_dir=tmp_path)


def _training_loss(module: CMGModule, datamodule: AnomalyDataModule) -> float:
    """Detector + CMLE loss over the training set, without jitter (deterministic)."""
    total, n = 0.0, 0
    torch.manual_seed(0)
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            texts = module._batch_texts(batch)
            output = module.model(
                batch["image"], module.model.keep_mask(batch["image"], batch["image_path"], texts)
            )
            total += module.model.loss(output, module.model.encode_texts(texts))["loss"].item() * len(texts)
            n += len(texts)
    return total / n


def test_texts_come_from_captions_then_the_template(cmg_dataset, tmp_path):
    datamodule = _datamodule(cmg_dataset)
    records = datamodule.split_index("train").records
    captions = tmp_path / "captions.json"
    captions.write_text(
        json.dumps({records[0].image_path.relative_to(cmg_dataset).as_posix(): "a shiny round disc"})
    )
    texts = ImageTexts.from_datamodule(datamodule, "{domain} photo of a {name}.", str(captions))
    assert texts.text(records[0].image_path, records[0].category) == "a shiny round disc"
    assert texts.text(records[-1].image_path, "weave") == "industrial photo of a weave."
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text(f"image,caption\n{records[1].image_path},absolute paths match too\n")
    assert load_captions(csv_file) == {str(records[1].image_path): "absolute paths match too"}
    assert (
        ImageTexts.from_datamodule(datamodule, "{name}", str(csv_file)).text(records[1].image_path, "disc")
        == "absolute paths match too"
    )
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="object mapping"):
        load_captions(tmp_path / "bad.json")


def test_cmer_relevance_is_computed_once_per_image_in_batched_calls(tiny_clip, cmg_dataset):
    module = _module(tiny_clip, tiny_cmg_config(cmer=CMERConfig(grid=2, chunk_size=8, cache_dir=None)))
    module.bind_data(_datamodule(cmg_dataset))
    calls = []
    original = module.model.image_embeddings
    module.model.image_embeddings = lambda images: calls.append(images.shape[0]) or original(images)
    batch = next(iter(_datamodule(cmg_dataset).train_dataloader()))
    texts = module._batch_texts(batch)
    first = module.model.relevance(batch["image"], batch["image_path"], texts)
    assert (
        first.shape == (6, 4) and sum(calls) == 6 * 5 and max(calls) <= 8
    )  # (1 + 4) views per image, chunked
    again = module.model.relevance(batch["image"], batch["image_path"], texts)
    torch.testing.assert_close(again, first)
    assert sum(calls) == 30  # second pass: all from the cache


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_the_relevance_cache(tiny_clip, cmg_dataset, tmp_path):
    L.seed_everything(3, verbose=False)
    cfg = tiny_cmg_config(cmer=CMERConfig(grid=2, cache_dir="run"))
    module = _module(tiny_clip, cfg)
    module.run_dir = tmp_path  # the job's folder, as the runner hands it over: cache_dir "run" is below it
    datamodule = _datamodule(cmg_dataset)
    module.bind_data(datamodule)
    before = _training_loss(module, datamodule)
    _trainer(tmp_path, epochs=8).fit(module, datamodule=datamodule)
    assert _training_loss(module, datamodule) < 0.8 * before
    cache_files = list((tmp_path / "cache" / "cmer").glob("relevance-*.pt"))
    assert len(cache_files) == 1 and len(module.model.relevance_cache.entries) == 12


def test_global_cmle_trains_from_a_bank_of_codes(tiny_clip, cmg_dataset, tmp_path):
    L.seed_everything(3, verbose=False)
    cfg = tiny_cmg_config(cmle=CMLEConfig(k=3, scope="global"), cmer=CMERConfig(enabled=False))
    module = _module(tiny_clip, cfg)
    _trainer(tmp_path, epochs=2).fit(module, datamodule=_datamodule(cmg_dataset, batch_size=4))
    assert module.structure is not None and module.structure.seen.all()
    assert module.structure.idx.shape == (12, 3)


def test_predict_gives_each_image_its_own_score_and_ignores_discarded_regions(tiny_clip, cmg_dataset):
    module = _module(tiny_clip)
    datamodule = _datamodule(cmg_dataset)
    batch = next(iter(datamodule.test_dataloader()))
    with pytest.raises(ZsadError, match="bind_data"):
        module.predict_batch(batch)
    module.bind_data(datamodule)
    scores, maps = module.predict_batch(batch)
    assert scores.shape == (8,) and maps.shape == (8, 32, 32)
    single, _ = module.predict_batch({k: v[1:2] for k, v in batch.items()})
    torch.testing.assert_close(single[0], scores[1])
    texts = module._batch_texts(batch)
    keep = module.model.keep_mask(batch["image"], batch["image_path"], texts)
    output = module.model(batch["image"], keep)
    assert not output.token_keep.all()
    reference = module.model.anomaly_maps(output, (32, 32))
    output.errors = output.errors + 100.0 * ~output.token_keep  # discarded regions cannot raise the map
    torch.testing.assert_close(module.model.anomaly_maps(output, (32, 32)), reference)
    no_cmer = tiny_cmg_config(cmer=CMERConfig(grid=2, apply_at_test=False))
    plain_module = _module(tiny_clip, no_cmer)
    plain_module.model.autoencoder.load_state_dict(module.model.autoencoder.state_dict())
    plain, _ = plain_module.predict_batch(batch)  # whole images at test: no texts needed
    assert not torch.allclose(plain, scores)


def test_checkpoint_holds_only_the_autoencoder(tiny_clip, tmp_path):
    module = _module(tiny_clip)
    checkpoint = {"state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all(
        k.startswith("model.autoencoder.") for k in checkpoint["state_dict"]
    )
    torch.save(checkpoint, tmp_path / "cmg.ckpt")
    other = _module(tiny_clip, tiny_cmg_config(detector=DetectorConfig(feature_layers=[2, 4], latent_dim=8)))
    with pytest.raises(ZsadError, match="different setup"):
        other.load_trained_weights(str(tmp_path / "cmg.ckpt"))
    same = _module(tiny_clip)
    same.load_trained_weights(str(tmp_path / "cmg.ckpt"))
    torch.testing.assert_close(
        same.model.autoencoder.encoder[0].weight, module.model.autoencoder.encoder[0].weight
    )
    optimizer = module.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in module.model.autoencoder.parameters()
    }


def test_a_captions_file_that_matches_no_training_image_is_an_error(tiny_clip, cmg_dataset, tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"elsewhere/000.png": "a caption for another dataset"}))
    module = _module(tiny_clip, tiny_cmg_config(captions_file=str(captions)))
    with pytest.raises(ConfigError, match="relative to the dataset root"):
        _trainer(tmp_path, epochs=1).fit(module, datamodule=_datamodule(cmg_dataset))


def test_pixel_mode_blanks_discarded_regions_before_the_encoder(tiny_clip):
    cfg = tiny_cmg_config(cmer=CMERConfig(grid=2, apply_to="pixels", fill="mean"))
    model = CMG(cfg, *tiny_clip)
    images = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[True, False, True, True], [False, True, True, False]])
    blanked = images.clone()
    blanked[0, :, :16, 16:] = 0.0
    blanked[1, :, :16, :16] = 0.0
    blanked[1, :, 16:, 16:] = 0.0
    pixels = model(images, keep)
    cfg.cmer.apply_to = "tokens"
    tokens_on_blanked = model(blanked, keep)
    torch.testing.assert_close(pixels.errors, tokens_on_blanked.errors)
    torch.testing.assert_close(pixels.token_keep, tokens_on_blanked.token_keep)
    assert pixels.token_keep.sum(1).tolist() == [12, 8]  # 4 of 16 tokens per discarded region


def test_relevance_cache_key_tells_random_weights_apart_and_bad_settings_fail(tiny_clip):
    from lightning_modules.clip import TINY_MODEL, create_clip

    cfg = tiny_cmg_config()
    torch.manual_seed(12345)
    other_clip = create_clip(TINY_MODEL, None)
    assert CMG(cfg, *tiny_clip).relevance_settings() != CMG(cfg, *other_clip).relevance_settings()
    with pytest.raises(ValueError, match="apply_to"):
        CMG(tiny_cmg_config(cmer=CMERConfig(apply_to="both")), *tiny_clip)
    with pytest.raises(ValueError, match="feature_layers"):
        CMG(tiny_cmg_config(detector=DetectorConfig(feature_layers=[7])), *tiny_clip)
