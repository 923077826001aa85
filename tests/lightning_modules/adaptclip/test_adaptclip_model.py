"""AdaptCLIP's pieces outside the parity run: training prompt draws, fusion, config checks, published rows."""

from __future__ import annotations

import pytest
import torch

from datamodules import AnomalyDataModule, DataConfig
from datamodules.errors import ConfigError
from datamodules.synthetic import generate_synthetic_dataset
from lightning_modules.adaptclip.model import STATIC_TEMPLATES, check_config, fuse, static_prompts
from lightning_modules.adaptclip.training_prompts import TrainingPrompts
from lightning_modules.registry import get_method


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> AnomalyDataModule:
    root = tmp_path_factory.mktemp("adaptclip") / "src"
    generate_synthetic_dataset(
        root, seed=1, categories=["disc", "weave"], image_size=32, n_train=3, n_test_good=2
    )
    return AnomalyDataModule(DataConfig(name="synthetic", root=str(root), num_workers=0), 32, seed=5)


def test_training_prompts_are_normal_training_images_of_the_category_drawn_per_seed_epoch_sample(source):
    prompts = TrainingPrompts(source, "normal_train", 1)
    again = TrainingPrompts(source, "normal_train", 1)
    draws = {(epoch, sample): prompts.paths(epoch, sample, 1) for epoch in range(4) for sample in range(6)}
    assert all(again.paths(e, s, 1) == p for (e, s), p in draws.items())  # a resume draws the same
    assert all(p[0].parts[-4:-1] == ("weave", "train", "good") for p in draws.values())
    assert len({p[0] for p in draws.values()}) == 3  # the draws reach every training image
    assert prompts.images(0, torch.tensor([0, 1]), torch.tensor([0, 1])).shape == (2, 1, 3, 32, 32)


def test_training_split_prompts_exclude_the_sample_itself(source):
    prompts = TrainingPrompts(source, "training_split", 1)
    train = source.split_index("test").records
    for sample, record in enumerate(train):
        if record.label == 0:
            category = source.categories.index(record.category)
            for epoch in range(3):
                (path,) = prompts.paths(epoch, sample, category)
                assert path != record.image_path and path.parent.name == "good"


def test_training_split_prompts_of_a_few_shot_training_set_come_from_it_and_exclude_the_sample(tmp_path):
    """With source.train_shots, sample_id indexes the drawn set: the prompts are its normal images (never one
    the draw left out) and never the sample itself (the whole split's position sample_id is another image)."""
    root = tmp_path / "src"
    generate_synthetic_dataset(
        root, seed=1, categories=["disc", "weave"], image_size=32, n_train=3, n_test_good=6
    )
    cfg = DataConfig(name="synthetic", root=str(root), num_workers=0, train_shots=4)
    data = AnomalyDataModule(cfg, 32, seed=5)
    drawn = data.train_index.records
    assert len(drawn) < len(data.split_index("test").records)
    prompts = TrainingPrompts(data, "training_split", 1)
    normal = {(r.category, r.image_path) for r in drawn if r.label == 0}
    for sample, record in enumerate(drawn):
        category = data.categories.index(record.category)
        for epoch in range(6):
            (path,) = prompts.paths(epoch, sample, category)
            assert path != record.image_path and (record.category, path) in normal


def test_fusion_is_their_fusion_fun():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.3])
    torch.testing.assert_close(fuse([a, b], "average_mean"), torch.tensor([0.75, 0.15]))
    torch.testing.assert_close(fuse([a, b], "harmonic_mean"), torch.tensor([2 / 3, 0.0]))


def test_static_prompts_are_their_147_normal_and_84_anomalous_texts():
    assert len(STATIC_TEMPLATES) == 21
    normal = static_prompts(
        (
            "{}",
            "flawless {}",
            "perfect {}",
            "unblemished {}",
            "{} without flaw",
            "{} without defect",
            "{} without damage",
        )
    )
    assert (
        len(normal) == 147
        and normal[0] == "a cropped photo of the object."
        and normal[21] == "a cropped photo of the flawless object."
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fusion", "max", "fusion"),
        ("train_prompts", "test", "train_prompts"),
        ("train_prompt_images", 0, "train_prompt_images"),
    ],
)
def test_unknown_settings_are_refused(field, value, message):
    cfg = get_method("adaptclip").config_class()
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_published_rows_are_the_readme_ablation_rows_4_and_7():
    published = get_method("adaptclip").published
    expected = {
        0: {"mvtec": (93.5, 38.3), "visa": (84.8, 26.1)},
        1: {"mvtec": (94.2, 52.5), "visa": (92.0, 38.8)},
    }
    for shots, rows in expected.items():
        numbers = published.numbers(shots)
        assert set(numbers) == set(rows)
        for dataset, (image_auroc, pixel_aupr) in rows.items():  # their AUPR: anomalib's trapezoid
            assert numbers[dataset] == pytest.approx(
                {"image_auroc": image_auroc / 100, "pixel_aupr": pixel_aupr / 100}
            )
    assert "row 4" in published.source_of(0) and "row 7" in published.source_of(1)


def test_a_repeated_prompt_image_changes_nothing_and_more_prompts_run():
    """K prompt (or reference) images are pooled: a duplicate adds no new nearest patch (their 2-shot draw
    with replacement can repeat an image), and several distinct ones run through the same adapter."""
    from lightning_modules.adaptclip.model import AdaptCLIP
    from pipelines.config import compose, to_object

    cfg = to_object(compose("demo", ["method=adaptclip_tiny"])).method
    torch.manual_seed(0)
    model = AdaptCLIP(cfg).eval()
    features = model.encode_images(torch.randn(3, 3, 64, 64))
    prompt = model.encode_images(torch.randn(3, 3, 64, 64)).tokens
    once = model.scores(features, (64, 64), [t[:, None] for t in prompt])
    twice = model.scores(features, (64, 64), [torch.stack([t, t], dim=1) for t in prompt])
    for a, b in zip(
        [*once.pq_probs, *once.pq_aligns, *once.pq_logits],
        [*twice.pq_probs, *twice.pq_aligns, *twice.pq_logits],
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    other = model.encode_images(torch.randn(3, 3, 64, 64)).tokens
    both = model.scores(
        features, (64, 64), [torch.stack([t, u], dim=1) for t, u in zip(prompt, other, strict=True)]
    )
    closer = [
        torch.minimum(a, b)
        for a, b in zip(
            once.pq_aligns,
            model.scores(features, (64, 64), [u[:, None] for u in other]).pq_aligns,
            strict=True,
        )
    ]
    for pooled, expected, single in zip(both.pq_aligns, closer, once.pq_aligns, strict=True):
        assert pooled.shape == (3, 1, 64, 64)
        # the patch-level minimum over both images, upsampled with nonnegative bilinear weights, lies below
        # each image's own upsampled alignment map
        assert (pooled <= expected + 1e-6).all()
        assert (pooled < single - 1e-6).any()  # the second image is nearer somewhere


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loaders_workers_read_each_items_prompt_images_as_drawn(source, workers):
    """The prompt images arrive in the batch (read in the loader's workers, as their DataLoader does), the
    images TrainingPrompts draws for (epoch, sample), whatever the number of workers."""
    prompts = TrainingPrompts(source, "normal_train", 2)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=source.cfg.root, num_workers=workers, batch_size=4), 32, seed=5
    )
    data.set_train_item_extras(prompts)
    loader = data.train_dataloader()
    seen = 0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            expected = prompts.images(epoch, batch["sample_id"], batch["category_id"])
            assert batch["prompt_images"].shape == (len(batch["sample_id"]), 2, 3, 32, 32)
            torch.testing.assert_close(batch["prompt_images"], expected, rtol=0, atol=0)
            seen += len(batch["sample_id"])
    assert seen == 2 * len(source.split_index("test").records)
    data.set_train_item_extras(None)
    assert "prompt_images" not in next(iter(data.train_dataloader()))


def test_the_readme_rows_stand_beside_the_authors_settings_only():
    """`zsad report --reference`: their README's rows beside runs of their code's settings (the experiments'
    composed method, weights by tag or OpenAI's file, any cache setting); a switch off their value
    (pq_context=False, whose effect their README notes) gets none."""
    import dataclasses

    from lightning_modules.adaptclip.spec import ADAPTCLIP
    from lightning_modules.method_spec import flatten
    from pipelines.config import compose, to_object

    for experiment in ("adaptclip_mvtec_to_all", "adaptclip_visa_to_mvtec"):
        settings = flatten(dataclasses.asdict(to_object(compose(experiment)).method))
        assert ADAPTCLIP.published_numbers(settings) == ADAPTCLIP.published, experiment
    assert ADAPTCLIP.published_numbers({"cache_features": False, "cache_dir": "/c"}) == ADAPTCLIP.published
    assert ADAPTCLIP.published_numbers({"backbone.pretrained": "/w/ViT-L-14-336px.pt"}) == ADAPTCLIP.published
    for key, value in (("pq_context", False), ("pq_share_heads", False), ("backbone.pretrained", "/w/x.pt"),
                       ("feature_layers", [6, 12, 18]), ("train_prompts", "training_split")):  # fmt: skip
        assert ADAPTCLIP.published_numbers({key: value}) is None, key
