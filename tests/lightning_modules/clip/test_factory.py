"""Creating models offline: random tiny weights, local files, and clear errors."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import WeightsNotFoundError, ZsadError
from lightning_modules.clip import TINY_MODEL, create_clip


def test_tiny_model_is_frozen_and_in_eval_mode(tiny_clip):
    model, tokenizer = tiny_clip
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer(["object"]).shape == (1, 77)


def test_local_weights_file_is_loaded(tmp_path, tiny_clip):
    model, _ = tiny_clip
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = create_clip(TINY_MODEL, str(path))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_missing_pretrained_weights_give_one_line_with_where_to_put_them(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        create_clip("ViT-L-14-336-quickgelu", "openai", cache_dir=str(tmp_path / "empty-cache"))
    message = str(info.value)
    assert "\n" not in message
    assert "not available offline" in message and "method.backbone.pretrained=" in message


def test_missing_weights_file_and_unknown_names():
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_clip(TINY_MODEL, "/nonexistent/weights.bin")
    with pytest.raises(WeightsNotFoundError, match="neither a file nor a pretrained tag"):
        create_clip("ViT-B-16", "no-such-tag")
    with pytest.raises(ZsadError, match="unknown CLIP architecture"):
        create_clip("ViT-Q-99", None)


def test_with_mlp_activation_swaps_both_towers_and_copies_unless_in_place(tiny_clip):
    import copy

    from torch import nn

    from lightning_modules.clip.factory import mlp_activation, with_mlp_activation

    model, _ = tiny_clip
    assert mlp_activation(model) == "quick_gelu"
    assert with_mlp_activation(model, "quick_gelu") is model  # nothing to change
    gelu = with_mlp_activation(model, "gelu")
    assert gelu is not model and mlp_activation(model) == "quick_gelu"  # the caller's model is untouched
    blocks = [*gelu.visual.transformer.resblocks, *gelu.transformer.resblocks]
    assert len(blocks) == 6 + 9 and all(type(b.mlp.gelu) is nn.GELU for b in blocks)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), gelu.parameters(), strict=True))
    owned = copy.deepcopy(model)
    assert with_mlp_activation(owned, "gelu", in_place=True) is owned and mlp_activation(owned) == "gelu"
    with pytest.raises(ZsadError, match="unknown MLP activation"):
        with_mlp_activation(model, "relu")
