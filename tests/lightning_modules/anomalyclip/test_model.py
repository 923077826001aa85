"""AnomalyCLIP on the tiny CLIP: prompt layout, frozen weights, the objective, batched inference."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.anomalyclip import AnomalyCLIP
from lightning_modules.losses import dice_loss, focal_loss
from tests_support import tiny_anomalyclip_config as tiny_config


@pytest.fixture
def model(tiny_clip) -> AnomalyCLIP:
    torch.manual_seed(0)
    clip_model, tokenizer = tiny_clip
    return AnomalyCLIP(tiny_config(), clip_model, tokenizer)


def test_prompts_splice_learned_vectors_after_the_start_token(model):
    prompts = model.prompts()
    tokens = model.prompts.token_ids
    reference = model.text.embed(tokens)
    assert prompts.shape == reference.shape == (2, 77, model.text.width)
    torch.testing.assert_close(prompts[0, 1:13], model.prompts.normal_context)
    torch.testing.assert_close(prompts[1, 1:13], model.prompts.abnormal_context)
    torch.testing.assert_close(prompts[:, :1], reference[:, :1])  # start token
    torch.testing.assert_close(
        prompts[:, 13:], reference[:, 13:]
    )  # "object ." / "damaged object ." + end + padding
    assert tokens[0].argmax() == 1 + 12 + 2  # end token after "object" "."
    assert tokens[1].argmax() == 1 + 12 + 3  # after "damaged" "object" "."


def test_only_prompt_parameters_train(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("prompts.") for name in trainable)
    width = model.text.width
    assert sum(p.numel() for p in model.trainable_parameters()) == 2 * 12 * width + 8 * 4 * width


def test_deep_tokens_are_rounded_to_float16_when_faithful(model):
    with torch.no_grad():
        model.prompts.deep_tokens[0][0, 0] = 1.0 + 2**-13  # not representable in float16
    faithful = model.text_embeddings()
    model.cfg.round_deep_prompts_fp16 = False
    exact = model.text_embeddings()
    assert not torch.equal(faithful, exact)
    with torch.no_grad():
        for deep in model.prompts.deep_tokens:
            deep.copy_(deep.half().float())  # representable: rounding changes nothing
    exact = model.text_embeddings()
    model.cfg.round_deep_prompts_fp16 = True
    assert torch.equal(model.text_embeddings(), exact)


def _deep_prompt_gradients(model, weights):
    """Plain torch, the official order: every prompt gets its own float16 copy of each deep token block
    (leaves here); the gradient of a block is the sum over prompts of each copy's gradient rounded to
    float16. Returns (official, rounded after summing, the per-copy gradients)."""
    copies = [
        d.detach().half().float().expand(2, -1, -1).clone().requires_grad_(True)
        for d in model.prompts.deep_tokens
    ]
    first = model.cfg.deep_prompt_blocks[0]
    features = model.text(model.prompts().detach(), model.prompts.token_ids, copies, deep_first_block=first)
    (torch.nn.functional.normalize(features.float(), dim=-1) * weights).sum().backward()
    official = [c.grad.half().float().sum(0) for c in copies]
    summed_first = [c.grad.sum(0).half().float() for c in copies]
    return official, summed_first


def test_deep_prompt_gradients_are_rounded_per_prompt_as_the_official_code(model):
    torch.manual_seed(3)
    weights = torch.randn(2, model.text_embeddings().shape[-1]) * 1e3  # gradients well inside float16
    official, summed_first = _deep_prompt_gradients(model, weights)
    (model.text_embeddings() * weights).sum().backward()
    got = [d.grad for d in model.prompts.deep_tokens]
    differs = 0
    for g, want, old in zip(got, official, summed_first, strict=True):
        ulp = torch.finfo(torch.float16).eps * want.abs().clamp_min(torch.finfo(torch.float16).tiny)
        assert ((g - want).abs() <= ulp).all()
        differs += int(((old - want).abs() > 0).sum())
    assert differs > 0  # rounding after summing the two prompts' gradients is another result


def test_loss_is_ce_plus_lambda_times_focal_and_two_dice(model):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 1])
    masks = (torch.rand(3, 32, 32) > 0.8).float()
    output = model(images)
    losses = model.loss(output, labels, masks)
    probs = output.pixel_probs[6]
    pixel = focal_loss(probs, masks) + dice_loss(probs[:, 1], masks) + dice_loss(probs[:, 0], 1 - masks)
    ce = torch.nn.functional.cross_entropy(output.image_logits, labels)
    torch.testing.assert_close(losses["loss"], ce + 4.0 * pixel)
    image_only = model.loss(output, labels, None)
    torch.testing.assert_close(image_only["loss"], ce)


def test_training_steps_reduce_the_loss_and_leave_clip_unchanged(model):
    torch.manual_seed(2)
    images = torch.randn(8, 3, 32, 32)
    masks = torch.zeros(8, 32, 32)
    masks[4:, 8:20, 8:20] = 1.0
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3, betas=(0.5, 0.999))
    features = model.encode_images(images)
    first = None
    for _ in range(40):
        loss = model.loss(model.scores(features, (32, 32)), labels, masks)["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.9 * first
    for key, value in model.clip.state_dict().items():
        assert torch.equal(value, clip_before[key]), key


def test_batched_inference_gives_each_image_its_own_score(model):
    """The authors' test code returned the first image's score for a whole batch; ours must not."""
    torch.manual_seed(3)
    images = torch.randn(4, 3, 32, 32)
    scores, maps = model.predict(images, size=(32, 32))
    assert maps.shape == (4, 32, 32)
    for i in range(4):
        single_score, single_map = model.predict(images[i : i + 1], size=(32, 32))
        torch.testing.assert_close(scores[i : i + 1], single_score, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(maps[i : i + 1], single_map, atol=1e-6, rtol=1e-5)
    assert len(set(scores.tolist())) == 4


def test_invalid_layer_settings_are_rejected(tiny_clip):
    clip_model, tokenizer = tiny_clip
    with pytest.raises(ValueError, match="map_layers"):
        AnomalyCLIP(tiny_config(map_layers=[7]), clip_model, tokenizer)
    with pytest.raises(ValueError, match="deep_prompt_blocks"):
        AnomalyCLIP(tiny_config(deep_prompt_blocks=[1, 2]), clip_model, tokenizer)
