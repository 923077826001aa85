"""The prompt text encoder against open_clip, and where deep tokens go."""

from __future__ import annotations

import torch

from lightning_modules.clip.text import PromptTextEncoder


def test_plain_text_equals_open_clip(tiny_clip):
    model, tokenizer = tiny_clip
    tokens = tokenizer(["a photo of a damaged object.", "flawless bottle", "x"])
    encoder = PromptTextEncoder(model)
    torch.testing.assert_close(encoder.encode(tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_deep_tokens_overwrite_positions_1_to_k_of_the_chosen_blocks(tiny_clip):
    model, tokenizer = tiny_clip
    encoder = PromptTextEncoder(model)
    tokens = tokenizer(["X X X X X X object.", "X X X X X X damaged object."])
    embeddings = encoder.embed(tokens)
    deep = [
        torch.full((4, encoder.width), float(j + 1)) for j in range(8)
    ]  # block 2 gets 1.0, block 9 gets 8.0
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        block.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
        for i, block in enumerate(encoder.transformer.resblocks, start=1)
    ]
    try:
        encoder(embeddings, tokens, deep, deep_first_block=2)
    finally:
        for hook in hooks:
            hook.remove()
    expected_block1 = embeddings + encoder.positional_embedding[: tokens.shape[1]]
    torch.testing.assert_close(seen[1], expected_block1)  # block 1: no deep tokens
    for i in range(2, 10):
        torch.testing.assert_close(seen[i][:, 1:5], torch.full((2, 4, encoder.width), float(i - 1)))
        assert not torch.allclose(seen[i][:, 5], torch.full((2, encoder.width), float(i - 1)))
        assert not torch.equal(seen[i][:, 0], seen[i][:, 1])  # start token position untouched


def test_features_depend_on_deep_tokens_and_are_differentiable(tiny_clip):
    model, tokenizer = tiny_clip
    encoder = PromptTextEncoder(model)
    tokens = tokenizer(["X X object."])
    embeddings = encoder.embed(tokens)
    deep = [torch.zeros(2, encoder.width, requires_grad=True)]
    out = encoder(embeddings, tokens, deep, deep_first_block=2)
    out.sum().backward()
    assert deep[0].grad is not None and deep[0].grad.abs().sum() > 0
    assert not torch.allclose(out, encoder.encode(tokens))


def test_deep_tokens_per_prompt_equal_shared_ones(tiny_clip):
    """``[n, k, width]`` (AnomalyCLIP's one copy per prompt) gives the features of ``[k, width]`` shared."""
    model, tokenizer = tiny_clip
    encoder = PromptTextEncoder(model)
    tokens = tokenizer(["X X object.", "X X damaged object."])
    embeddings = encoder.embed(tokens)
    shared = [torch.randn(2, encoder.width, generator=torch.Generator().manual_seed(j)) for j in range(3)]
    per_prompt = [d.expand(2, -1, -1).clone() for d in shared]
    expected = encoder(embeddings, tokens, shared, deep_first_block=2)
    torch.testing.assert_close(encoder(embeddings, tokens, per_prompt, deep_first_block=2), expected)
    per_prompt[0][1] += 1.0  # the copies are used per prompt: changing prompt 1's changes only its features
    changed = encoder(embeddings, tokens, per_prompt, deep_first_block=2)
    torch.testing.assert_close(changed[0], expected[0])
    assert not torch.allclose(changed[1], expected[1])
