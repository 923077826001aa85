"""FAPrompt on the tiny CLIP: prompt layout, the prior, scoring, the objective, batched inference."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError
from lightning_modules.faprompt import FAPrompt, FAPromptConfig
from lightning_modules.losses import dice_loss, focal_loss
from tests_support import tiny_anomalyclip_config

SIZE = (32, 32)


def tiny_config(**overrides) -> FAPromptConfig:
    """FAPrompt on the tiny random-weight CLIP at 32 px (DPAM on blocks 2..6, maps from block 6)."""
    return tiny_anomalyclip_config(FAPromptConfig, **overrides)


@pytest.fixture
def model(tiny_clip) -> FAPrompt:
    torch.manual_seed(0)
    clip_model, tokenizer = tiny_clip
    return FAPrompt(tiny_config(), clip_model, tokenizer)


def _batch(seed: int = 1, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, *SIZE, generator=g)
    labels = torch.tensor([0, 1] * (n // 2))
    masks = torch.zeros(n, *SIZE)
    masks[labels == 1, 8:20, 8:20] = 1.0
    return images, labels, masks


def test_prompts_are_the_compound_abnormality_prompts(model):
    """``[N1..N5] object.`` and ten ``[N1..N5][A1 A2]_j damaged object.``, the N shared."""
    prompts = model.prompts
    reference = model.text.embed(prompts.token_ids)
    normal, abnormal = prompts.normal(), prompts.abnormal()
    assert normal.shape == (1, 77, model.text.width) and abnormal.shape == (1, 10, 77, model.text.width)
    torch.testing.assert_close(normal[0, 1:6], prompts.normal_context)
    torch.testing.assert_close(normal[0, 6:], reference[0, 6:])  # "object ." + end + padding
    for j in range(10):
        torch.testing.assert_close(abnormal[0, j, 1:6], prompts.normal_context)
        torch.testing.assert_close(abnormal[0, j, 6:8], prompts.abnormal_context[j])
        torch.testing.assert_close(abnormal[0, j, 8:], reference[1, 8:])  # "damaged object ." + end
    torch.testing.assert_close(abnormal[0, :, :1], reference[1, :1].expand(10, 1, -1))  # start token
    assert prompts.token_ids[0].argmax() == 1 + 5 + 2 and prompts.token_ids[1].argmax() == 1 + 7 + 3
    prior = torch.randn(2, model.text.width)
    with_prior = prompts.abnormal(prior)
    for i in range(2):  # the prior moves every abnormal vector of that image's prompts, nothing else
        torch.testing.assert_close(with_prior[i, :, 6:8], prompts.abnormal_context + prior[i])
        torch.testing.assert_close(with_prior[i, :, :6], abnormal[0, :, :6])


def test_only_the_prompt_learner_trains(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("prompts.") for name in trainable)
    w, d, k = model.text.width, model.vision.output_dim, 10
    meta = (k * d) * (k * d // 16) + k * d // 16 + (k * d // 16) * w + w
    assert sum(p.numel() for p in model.trainable_parameters()) == 5 * w + 10 * 2 * w + 8 * 4 * w + meta


def test_the_prior_reads_the_first_patches_as_their_code_or_the_most_abnormal(model):
    patches = torch.randn(2, 16, 8)
    abnormal = torch.rand(2, 16)
    torch.testing.assert_close(model.select_prior_patches(patches, abnormal), patches[:, :10])
    model.cfg.prior_selection = "top_abnormal"
    chosen = model.select_prior_patches(patches, abnormal)
    for i in range(2):
        order = abnormal[i].argsort(descending=True)[:10]
        torch.testing.assert_close(chosen[i], patches[i, order])


def test_scores_and_maps_follow_their_test_code(model):
    images, _, _ = _batch()
    output = model.scores(model.encode_images(images), SIZE, texts="inference")
    p_image = output.image_logits.softmax(-1)[:, 1]
    torch.testing.assert_close(
        output.image_scores, 0.5 * (p_image + (2 * output.static_max + output.prior_max) / 3)
    )
    s1, s2 = output.static_probs, output.prior_probs
    torch.testing.assert_close(output.anomaly_map(), (2 * s1[:, 1] + 2 * s2[:, 1]) / 4, atol=1e-6, rtol=0)
    # the prior texts are each image's own; the static ones are shared
    assert not torch.allclose(output.image_text[0], output.image_text[1])


def test_inference_texts_equal_the_training_texts(model):
    """Inference encodes the normal prompt once, training once per image (their per-copy float16 rounding
    of the deep tokens): the same numbers either way."""
    images, _, _ = _batch()
    features = model.encode_images(images)
    with torch.no_grad():
        train = model.scores(features, SIZE, texts="train")
    inference = model.scores(features, SIZE, texts="inference")
    for name in ("image_logits", "static_probs", "prior_probs", "prior", "image_text"):
        torch.testing.assert_close(getattr(inference, name), getattr(train, name), atol=2e-6, rtol=1e-5)


def test_batched_inference_gives_each_image_its_own_result(model):
    images, _, _ = _batch(n=4)
    scores, maps = model.predict(images, SIZE)
    assert maps.shape == (4, *SIZE) and len(set(scores.tolist())) == 4
    for i in range(4):
        single_score, single_map = model.predict(images[i : i + 1], SIZE)
        torch.testing.assert_close(scores[i : i + 1], single_score, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(maps[i : i + 1], single_map, atol=1e-6, rtol=1e-5)


def test_loss_is_their_five_terms(model):
    images, labels, masks = _batch()
    output = model(images)
    losses = model.loss(output, labels, masks)
    maps = 0
    for weight, probs in ((1.0, output.static_probs), (0.5, output.prior_probs)):
        maps = maps + weight * (
            focal_loss(probs, masks) + dice_loss(probs[:, 1], masks) + dice_loss(probs[:, 0], 1 - masks)
        )
    image = torch.nn.functional.cross_entropy(output.image_logits, labels)
    bce = torch.nn.functional.binary_cross_entropy(  # BCE *with logits* of a score in [0, 1], as train.py
        torch.sigmoid(output.image_scores), labels.float(), reduction="none"
    )
    score = ((1 - torch.exp(-bce)) ** 2 * bce).mean()
    texts = output.abnormal_text
    decorrelation = sum(
        abs(torch.dot(texts[a], texts[b]) / (texts[a].norm() * texts[b].norm()))
        for a in range(10)
        for b in range(a + 1, 10)
    )
    prior = sum(
        torch.nn.functional.mse_loss(output.prior[i], torch.zeros_like(output.prior[i])) for i in (0, 2)
    )
    expected = {"map_loss": maps, "image_loss": image, "score_loss": score}
    expected |= {"decorrelation_loss": decorrelation, "prior_loss": prior}
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(
        losses["loss"], maps + image + score + 0.1 * decorrelation + prior, rtol=1e-5, atol=1e-6
    )
    without_masks = model.loss(output, labels, None)
    torch.testing.assert_close(without_masks["loss"], losses["loss"] - losses["map_loss"])


def test_training_steps_reduce_the_loss_and_leave_clip_unchanged(model):
    images, labels, masks = _batch(n=4)
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-2, betas=(0.5, 0.999))
    features = model.encode_images(images)
    losses = []
    for _ in range(5):
        loss = model.loss(model.scores(features, SIZE), labels, masks)["loss"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.9 * losses[0]
    for key, value in model.clip.state_dict().items():
        assert torch.equal(value, clip_before[key]), key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"map_layers": [5, 6]}, "one layer"),
        ({"prior_selection": "random"}, "prior_selection must be one of"),
        ({"prior_tokens": 17}, r"prior_tokens must lie in 1\.\.16"),
    ],
)
def test_invalid_settings_are_refused(tiny_clip, overrides, message):
    clip_model, tokenizer = tiny_clip
    with pytest.raises(ConfigError, match=message):
        FAPrompt(tiny_config(**overrides), clip_model, tokenizer)
