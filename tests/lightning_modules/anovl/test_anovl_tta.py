"""AnoVL's test-time adaptation: it lowers its own loss, changes only the adapter, is per-image, and
refuses to run where autograd is off."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from dual_image_support import single_thread  # noqa: F401 - a fixture
from test_anovl_model import tiny_anovl_config

from datamodules.errors import ConfigError, ZsadError
from lightning_modules.anovl import AnoVL, BatchText, TestTimeAdaptation, TextAdapter, TTAConfig
from lightning_modules.anovl.tta import feature_noise, run_steps, tta_loss

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def setup(tiny_clip):
    model = AnoVL(tiny_anovl_config(), *tiny_clip)
    text = model.category_text("ring", "object")
    tokens = model.encode(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))).patch_tokens
    return model, BatchText.stack([text] * 3), tokens


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_tta_lowers_its_own_loss(setup):
    """On a fixed noise draw, the loss after adaptation is below the loss before, for every image.

    The random tiny CLIP's normal and abnormal texts are almost the same vector, so raw cosines leave every
    probability at 0.5; a CLIP-like temperature makes the loss move."""
    _, text, tokens = setup
    cfg, temperature = TTAConfig(steps=20, lr=1e-2), 0.01
    adapter = TextAdapter(text.prompts)
    adapter.reset_parameters(_generators([1, 2, 3]))
    noise = feature_noise(_generators([9, 9, 9]), (1, *tokens.shape[1:]), cfg.noise_std, tokens.device)
    with torch.no_grad():
        before = tta_loss(adapter, tokens, text.classes, noise, cfg, temperature)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr)
    history = run_steps(adapter, optimizer, tokens, text.classes, _generators([4, 5, 6]), cfg, temperature)
    with torch.no_grad():
        after = tta_loss(adapter, tokens, text.classes, noise, cfg, temperature)
    assert len(history) == 20
    assert (after < before - 1e-3).all(), (before, after)


def test_tta_loss_is_the_authors_formula(setup):
    _, text, tokens = setup
    cfg = TTAConfig()
    adapter = TextAdapter(text.prompts[:1])
    adapter.reset_parameters(_generators([0]))
    noise = torch.randn(1, 1, *tokens.shape[1:]) * cfg.noise_std
    loss = tta_loss(adapter, tokens[:1], text.classes[:1], noise, cfg)

    def probs(f):
        f = f / f.norm(dim=-1, keepdim=True)
        return (f @ text.classes[0].t()).softmax(-1)

    with torch.no_grad():
        clean, noisy = probs(adapter(tokens[:1]))[0], probs(adapter(tokens[:1] + noise[:, 0]))[0]
        pred = torch.stack([clean, noisy])  # the authors' loss_func on [1 + noise, N, 2]
        soft = -(pred[0] * pred[0].log()).sum(-1).mean()
        mask = torch.zeros_like(pred[1:])
        mask[..., 1] = 1
        hard = (-mask * pred[1:].log() - (1 - mask) * pred[0].log()).sum(-1).mean()
    torch.testing.assert_close(loss[0], soft + 0.5 * hard, atol=1e-5, rtol=1e-5)


def test_tta_changes_only_the_adapter(setup):
    model, text, tokens = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tta = TestTimeAdaptation(TTAConfig(steps=3, lr=1e-2))
    adapted = tta.adapt(tokens, text, seeds=[1, 2, 3], categories=["ring"] * 3)
    assert not adapted.requires_grad and adapted.shape == tokens.shape
    assert not torch.allclose(adapted, tokens)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    # the adapter moved away from its initialisation
    fresh = TextAdapter(text.prompts)
    fresh.reset_parameters(_generators([1, 2, 3]))
    trained = TextAdapter(text.prompts)
    trained.reset_parameters(_generators([1, 2, 3]))
    run_steps(
        trained,
        torch.optim.AdamW(trained.parameters(), lr=1e-2),
        tokens,
        text.classes,
        _generators([1, 2, 3]),
        TTAConfig(steps=3),
    )
    assert not torch.allclose(trained.weight, fresh.weight)


def test_batched_adaptation_equals_one_image_at_a_time(setup):
    _, text, tokens = setup
    tta = TestTimeAdaptation(TTAConfig(steps=3, lr=1e-2, reset="image"))
    together = tta.adapt(tokens, text, seeds=[11, 12, 13], categories=["ring"] * 3)
    for i, seed in enumerate([11, 12, 13]):
        one = BatchText(text.classes[i : i + 1], text.prompts[i : i + 1])
        alone = tta.adapt(tokens[i : i + 1], one, seeds=[seed], categories=["ring"])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_reset_policies(setup):
    _, text, tokens = setup
    image = TestTimeAdaptation(TTAConfig(steps=2, lr=1e-2, reset="image"))
    keep = TestTimeAdaptation(TTAConfig(steps=2, lr=1e-2, reset="image_keep_optimizer"))
    category = TestTimeAdaptation(TTAConfig(steps=2, lr=1e-2, reset="category"))
    first = [t.adapt(tokens, text, [1, 2, 3], ["ring"] * 3) for t in (image, keep, category)]
    # the first image of a category starts fresh under every policy
    for out in first[1:]:
        torch.testing.assert_close(out[0], first[0][0], atol=1e-5, rtol=1e-5)
    # later images carry state (optimizer moments, or the whole adapter)
    assert not torch.allclose(first[1][1], first[0][1]) and not torch.allclose(first[2][1], first[0][1])
    category.reset()
    torch.testing.assert_close(
        category.adapt(tokens, text, [1, 2, 3], ["ring"] * 3), first[2], atol=1e-6, rtol=1e-6
    )
    with pytest.raises(ConfigError, match="reset"):
        TestTimeAdaptation(dataclasses.replace(TTAConfig(), reset="never"))


def test_default_keeps_one_adamw_per_category_as_the_authors_loop(setup):
    """The authors' vl_test.py, written out: one AdamW per class made once, the adapter re-initialised for
    every image, moments and step count carried over; a new class starts with a fresh optimizer."""
    _, text, tokens = setup
    cfg = dataclasses.replace(TTAConfig(), steps=3, lr=1e-2)
    assert cfg.reset == "image_keep_optimizer"  # the default
    seeds, categories = [21, 22, 23], ["ring", "ring", "cells"]
    tta = TestTimeAdaptation(cfg)
    got = tta.adapt(tokens, text, seeds, categories)

    adapters, optimizers, expected = {}, {}, []
    for i, (seed, category) in enumerate(zip(seeds, categories, strict=True)):
        generator = torch.Generator().manual_seed(seed)
        if category not in adapters:
            adapters[category] = TextAdapter(text.prompts[i : i + 1])
            optimizers[category] = torch.optim.AdamW(adapters[category].parameters(), lr=cfg.lr)
        adapter, optimizer = adapters[category], optimizers[category]
        adapter.reset_parameters([generator])  # weight_reset per image
        for _ in range(cfg.steps):
            noise = feature_noise([generator], (1, *tokens.shape[1:]), cfg.noise_std, tokens.device)
            loss = tta_loss(adapter, tokens[i : i + 1], text.classes[i : i + 1], noise, cfg)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
        with torch.no_grad():
            expected.append(adapter(tokens[i : i + 1]))
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-6, rtol=1e-6)

    # the state itself: the category's AdamW has stepped for both of its images, the new one only for its own
    kept = {c: optimizer for c, (_, optimizer) in tta._persistent.items()}
    steps = {c: [float(state["step"]) for state in opt.state.values()] for c, opt in kept.items()}
    assert steps == {"ring": [6.0, 6.0], "cells": [3.0, 3.0]}
    # and it matters: the second image differs from what a fresh optimizer would give it
    fresh = TestTimeAdaptation(dataclasses.replace(cfg, reset="image")).adapt(
        tokens[1:2], BatchText(text.classes[1:2], text.prompts[1:2]), [22], ["ring"]
    )
    assert not torch.allclose(fresh, got[1:2], atol=1e-6)
    torch.testing.assert_close(  # while the first image of each category starts fresh
        TestTimeAdaptation(dataclasses.replace(cfg, reset="image")).adapt(
            tokens[2:3], BatchText(text.classes[2:3], text.prompts[2:3]), [23], ["cells"]
        ),
        got[2:3],
        atol=1e-6,
        rtol=1e-6,
    )
    tta.reset()  # a new test epoch / dataset forgets the optimizers
    assert tta._persistent == {}


def test_sequential_tta_refuses_ddp():
    """The spec's ``ddp_refusal``: the authors' reset carries optimizer state from image to image."""
    from lightning_modules.registry import get_method

    refusal = get_method("anovl").ddp_refusal
    reason = refusal(tiny_anovl_config())
    assert re.search(r"tta\.reset=image_keep_optimizer.*several processes.*reset=image", reason)
    assert refusal(tiny_anovl_config(**{"tta.reset": "image"})) is None
    assert refusal(tiny_anovl_config(**{"tta.enabled": False})) is None


def test_tta_refuses_inference_mode(setup):
    _, text, tokens = setup
    tta = TestTimeAdaptation(TTAConfig(steps=1))
    with torch.inference_mode(), pytest.raises(ZsadError, match="inference_mode=False"):
        tta.adapt(tokens, text, [1, 2, 3], ["ring"] * 3)
    with (
        torch.no_grad()
    ):  # what Lightning's test loop does with inference_mode=False: TTA enables grad itself
        assert tta.adapt(tokens, text, [1, 2, 3], ["ring"] * 3).shape == tokens.shape
