"""The VAND (APRIL-GAN) authors' checkpoints ({"trainable_linearlayer": state_dict}) load into zsad's heads."""

from __future__ import annotations

import pytest
import torch
from baselines_support import tiny_backbone

from datamodules.errors import ZsadError
from lightning_modules.registry import get_method
from lightning_modules.vand import VANDConfig, VANDModule

AUTHORS_FORMAT = get_method("vand").official_checkpoint  # the reader `zsad test` uses


def authors_linear_layer(width: int, embed_dim: int, k: int) -> dict[str, torch.Tensor]:
    """Named and shaped as their model.py LinearLayer for a ViT: fc = ModuleList(Linear(width, embed_dim) x k)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for i in range(k):
        state[f"fc.{i}.weight"] = torch.randn(embed_dim, width, generator=g)
        state[f"fc.{i}.bias"] = torch.randn(embed_dim, generator=g)
    return state


@pytest.fixture
def module(tiny_clip) -> VANDModule:
    return VANDModule(VANDConfig(backbone=tiny_backbone(), feature_layers=[2, 4, 6]))


def test_authors_linear_layers_map_onto_the_heads(module, tmp_path):
    width, embed = module.model.vision.width, module.model.vision.output_dim
    layers = authors_linear_layer(width, embed, 3)
    torch.save({"trainable_linearlayer": layers}, tmp_path / "visa_pretrained.pth")
    module.load_trained_weights(str(tmp_path / "visa_pretrained.pth"), AUTHORS_FORMAT)
    for i, head in enumerate(module.model.heads):
        assert torch.equal(head.weight, layers[f"fc.{i}.weight"]) and torch.equal(
            head.bias, layers[f"fc.{i}.bias"]
        )


def test_a_vand_file_that_does_not_fit_is_refused(module, tmp_path):
    width, embed = module.model.vision.width, module.model.vision.output_dim
    torch.save({"trainable_linearlayer": authors_linear_layer(width, embed, 4)}, tmp_path / "four.pth")
    with pytest.raises(ZsadError, match=r"unexpected \['model.heads.3.bias'"):
        module.load_trained_weights(str(tmp_path / "four.pth"), AUTHORS_FORMAT)
    torch.save({"trainable_linearlayer": authors_linear_layer(width + 1, embed, 3)}, tmp_path / "wide.pth")
    with pytest.raises(ZsadError, match="has shape"):
        module.load_trained_weights(str(tmp_path / "wide.pth"), AUTHORS_FORMAT)
    torch.save({"prompt_learner": {}}, tmp_path / "anomalyclip.pth")
    with pytest.raises(ZsadError, match="nor the VAND authors' linear layers"):
        module.load_trained_weights(str(tmp_path / "anomalyclip.pth"), AUTHORS_FORMAT)
