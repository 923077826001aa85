"""Prompt ensembles: the sentences, and their per-class embeddings against plain open_clip."""

from __future__ import annotations

import pytest
import torch
from baselines_support import one_torch_thread  # noqa: F401 - autouse fixture

from lightning_modules.clip import PromptTextEncoder
from lightning_modules.clip.prompts import (
    CLIP_PAIR,
    VAND,
    WINCLIP,
    PromptEnsemble,
    encode_prompt_ensemble,
    get_ensemble,
    trim_after_end_token,
)


def test_ensemble_sizes_and_sentences():
    assert CLIP_PAIR.sentences("metal nut") == (
        ["a photo of a normal metal nut."],
        ["a photo of an anomalous metal nut."],
    )
    normal, abnormal = WINCLIP.sentences("bottle")
    assert (len(normal), len(abnormal)) == (7 * 22, 4 * 22)  # the WinCLIP paper's 154 / 88
    assert (
        normal[0] == "a cropped photo of the bottle."
        and "a photo of a bottle without damage for anomaly detection." in normal
    )
    assert abnormal[-1] == "a photo of a bottle with damage for anomaly detection."
    normal, abnormal = VAND.sentences("pill")
    assert (len(normal), len(abnormal)) == (7 * 35, 5 * 35) and "a bad photo of a broken pill." in abnormal
    assert get_ensemble("winclip") is WINCLIP
    with pytest.raises(ValueError, match="unknown prompt ensemble"):
        get_ensemble("nope")


@pytest.mark.parametrize("normalize_each", [True, False])
def test_ensemble_embeddings_equal_open_clip(tiny_clip, normalize_each):
    model, tokenizer = tiny_clip
    ensemble = PromptEnsemble(
        ("{}", "perfect {}"), ("broken {}",), ("a photo of a {}.", "there is the {} in the scene.")
    )
    words = ["disc", "metal nut"]
    got = encode_prompt_ensemble(
        PromptTextEncoder(model), tokenizer, ensemble, words, normalize_each=normalize_each, chunk_size=3
    )
    assert got.shape == (2, 2, model.text_projection.shape[1])
    for c, word in enumerate(words):
        for s, sentences in enumerate(ensemble.sentences(word)):
            with torch.no_grad():
                features = model.encode_text(tokenizer(sentences))
            if normalize_each:
                features = features / features.norm(dim=-1, keepdim=True)
            mean = features.mean(dim=0)
            torch.testing.assert_close(got[c, s], mean / mean.norm(), atol=1e-5, rtol=1e-5)


def test_trimming_after_the_end_token_is_exact(tiny_clip):
    model, tokenizer = tiny_clip
    encoder = PromptTextEncoder(model)
    token_ids = tokenizer(["a photo of a disc.", "a much longer sentence about a flawless metal nut."])
    trimmed = trim_after_end_token(token_ids, encoder)
    assert trimmed.shape[1] == int(token_ids.argmax(-1).max()) + 1 < token_ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(trimmed), encoder.encode(token_ids), atol=1e-5, rtol=1e-5)
