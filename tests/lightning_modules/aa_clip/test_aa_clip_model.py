"""AA-CLIP's model on the tiny random-weight CLIP: what each stage trains, the batch coupling of stage 1's
surgery features, the per-category score fusion and the object words (the numbers themselves are checked
against the authors' code in test_aa_clip_parity.py)."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError
from lightning_modules.aa_clip import AAClip, AAClipConfig
from lightning_modules.aa_clip.model import fused_image_scores
from lightning_modules.aa_clip.object_words import authors_object_words
from lightning_modules.clip.config import BackboneConfig


def tiny(**overrides) -> AAClip:
    torch.manual_seed(0)
    backbone = BackboneConfig(name="zsad-tiny-vit", pretrained=None, image_size=64)
    settings = {"feature_layers": [3, 4, 5, 6], "image_adapt_until": 3, "surgery_until_layer": 5}
    model = AAClip(AAClipConfig(backbone=backbone, **(settings | overrides)))
    model.set_classes(["disc", "weave"])
    return model


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    masks = (torch.rand(4, 64, 64, generator=generator) > 0.8).float()
    masks[1] = 0
    return images, masks, torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1])


def gradient_owners(model: AAClip) -> set[str]:
    return {name.split(".")[0] for name, p in model.adapters.named_parameters() if p.grad is not None}


def test_stage_one_trains_the_text_side_and_stage_two_the_image_side(batch):
    images, masks, labels, ids = batch
    model = tiny()
    model.text_stage_loss(images, masks, ids)["loss"].backward()
    assert gradient_owners(model) == {"text_adapter"}
    model.adapters.zero_grad(set_to_none=True)
    model.image_stage_loss(images, masks, labels, ids)["loss"].backward()
    assert gradient_owners(model) == {"image_adapter"}
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_surgery_attention_over_the_batch_couples_images_as_theirs(batch):
    """``batch`` (their layout): an image's features change with the other images of its batch; ``tokens``:
    they do not."""
    images = batch[0]
    other = images.clone()
    other[1:] = torch.randn_like(other[1:])
    for axis, coupled in (("batch", True), ("tokens", False)):
        model = tiny(surgery_attention_over=axis)
        first = model.surgery_patches(images)[-1][0]
        changed = model.surgery_patches(other)[-1][0]
        assert (not torch.allclose(first, changed, atol=1e-4)) == coupled, axis


def test_the_last_layer_alone_makes_stage_one_loss_unless_all_are_asked_for(batch):
    images, masks, _, ids = batch
    last = tiny().text_stage_loss(images, masks, ids)["seg_loss"]
    summed = tiny(text_loss_layers="all").text_stage_loss(images, masks, ids)["seg_loss"]
    assert summed > 2 * last


def test_fused_image_scores_follow_their_metrics_eval():
    scores = torch.tensor([0.2, 0.4, 0.6])
    maps = torch.tensor([0.0, 1.0, 3.0])[:, None, None] * torch.ones(3, 2, 2)
    maps[1, 0, 0], maps[2, 1, 1] = 2.0, -1.0  # the category's lowest pixel is not in its lowest-peak map
    peak = (torch.tensor([0.0, 2.0, 3.0]) + 1.0) / 4.0
    torch.testing.assert_close(fused_image_scores(scores, maps, medical=True), peak)
    torch.testing.assert_close(
        fused_image_scores(scores, maps, medical=False), 0.5 * peak + 0.5 * torch.tensor([0.0, 0.5, 1.0])
    )


def test_object_words_are_their_descriptions_where_they_have_one():
    words = authors_object_words(
        ["bottle", "bottle", "01"], ["mvtec", "visa", "btad"], ["bottle", "bottle", "01"]
    )
    assert (
        words[0] == "dark bottle" and words[1] == "bottle" and words[2].startswith("Bright concentric rings")
    )


def test_settings_the_tower_cannot_hold_are_refused():
    with pytest.raises(ConfigError, match="surgery_until_layer"):
        tiny(surgery_until_layer=20)
    with pytest.raises(ConfigError, match="surgery_attention_over"):
        tiny(surgery_attention_over="heads")
    with pytest.raises(ConfigError, match="prompt_words"):
        tiny(prompt_words="ensemble")


@pytest.mark.parametrize("processes", [1, 2])
def test_under_ddp_the_idle_stage_joins_the_backward_with_zero_gradients(batch, processes):
    """DDP reduces every trainable parameter in each backward pass: stage 1's loss carries the image
    adapters with weight 0 on several processes (same value, zero gradients), never in one."""
    from types import SimpleNamespace

    from lightning_modules.aa_clip.module import AAClipModule

    images, masks, _, ids = batch
    model = tiny()
    module = AAClipModule(model.cfg, model=model)
    module._trainer = SimpleNamespace(world_size=processes)
    loss = model.text_stage_loss(images, masks, ids)["loss"]
    joined = module.with_every_parameter(loss, model.adapters.image_adapter)
    assert float(joined.detach()) == float(loss.detach()) and (joined is loss) == (processes == 1)
    joined.backward()
    grads = [p.grad for p in model.adapters.image_adapter.parameters()]
    assert all(g is None for g in grads) if processes == 1 else all(bool((g == 0).all()) for g in grads)
    assert all(p.grad is not None for p in model.adapters.text_adapter.parameters())
