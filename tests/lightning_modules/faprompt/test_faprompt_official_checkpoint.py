"""The FAPrompt authors' checkpoints ({"prompt_learner": state_dict}, as their train.py saves them) load into
zsad's prompts and meta-net; a file of another shape or method is refused in one line. (A file their
train.py itself wrote is loaded by the parity test.)"""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ZsadError
from lightning_modules.faprompt import FAPromptConfig, FAPromptModule
from lightning_modules.registry import get_method
from tests_support import authors_prompt_learner, tiny_anomalyclip_config

AUTHORS_FORMAT = get_method("faprompt").official_checkpoint  # the reader `zsad test` uses


@pytest.fixture(scope="module")
def module() -> FAPromptModule:
    torch.manual_seed(0)
    return FAPromptModule(tiny_anomalyclip_config(FAPromptConfig))


def their_learner(module: FAPromptModule, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict named and shaped as their ``FAPrompt`` prompt learner (FAPrompt.py); random values."""
    g = torch.Generator().manual_seed(seed)
    prompts, width = module.model.prompts, module.model.text.width
    length = prompts.token_ids.shape[1]
    state = {
        "ctx_pos": torch.randn(1, 1, 5, width, generator=g),
        "ctx_neg": torch.randn(1, 10, 2, width, generator=g),
        **{
            f"patch_meta_net.{k}": torch.randn(v.shape, generator=g)
            for k, v in prompts.meta_net.state_dict().items()
        },
        **{f"compound_prompts_text.{j}": torch.randn(4, width, generator=g) for j in range(8)},
        "token_prefix_pos": torch.randn(1, 1, 1, width, generator=g),
        "token_suffix_pos": torch.randn(1, 1, length - 6, width, generator=g),
        "token_prefix_neg": torch.randn(1, 10, 1, width, generator=g),
        "token_suffix_neg": torch.randn(1, 10, length - 8, width, generator=g),
        "tokenized_prompts_pos": prompts.token_ids[0].reshape(1, 1, -1).int(),
        "tokenized_prompts_neg": prompts.token_ids[1].expand(1, 10, -1).int(),
    }
    for j in range(8):  # Linear(width, 896) per deep block, unused by their forward
        state[f"compound_prompt_projections.{j}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{j}.bias"] = torch.randn(896, generator=g)
    return state


def test_their_checkpoint_maps_onto_the_prompts_and_the_meta_net(module, tmp_path):
    learner = their_learner(module)
    torch.save({"prompt_learner": learner}, tmp_path / "epoch_15.pth")
    module.load_trained_weights(str(tmp_path / "epoch_15.pth"), AUTHORS_FORMAT)
    prompts = module.model.prompts
    assert torch.equal(prompts.normal_context, learner["ctx_pos"][0, 0])
    assert torch.equal(prompts.abnormal_context, learner["ctx_neg"][0])
    for key, value in prompts.meta_net.state_dict().items():
        assert torch.equal(value, learner[f"patch_meta_net.{key}"]), key
    for j, deep in enumerate(prompts.deep_tokens):
        assert torch.equal(deep, learner[f"compound_prompts_text.{j}"])
    abnormal = prompts.abnormal()[0]  # [10, L, width]: the shared normal vectors, then each prompt's own
    assert torch.equal(abnormal[3, 1:6], learner["ctx_pos"][0, 0])
    assert torch.equal(abnormal[3, 6:8], learner["ctx_neg"][0, 3])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(ctx_neg=s["ctx_neg"][:, :1]), r"abnormal_context has shape \(1, 2, 64\)"),
        (lambda s: s.update(ctx_pos=s["ctx_pos"][0]), r"ctx_pos has shape \(1, 5, 64\), expected \[1, 1"),
        (lambda s: s.pop("patch_meta_net.linear2.bias"), "missing .'model.prompts.meta_net.linear2.bias'"),
        (lambda s: s.update(extra=torch.zeros(1)), "unexpected entry 'extra'"),
        (lambda s: s["tokenized_prompts_neg"][0, 0].__setitem__(3, 5), "tokenized_prompts_neg differ"),
    ],
)
def test_a_file_that_does_not_fit_is_refused_clearly(module, tmp_path, change, message):
    learner = their_learner(module)
    change(learner)
    torch.save({"prompt_learner": learner}, tmp_path / "bad.pth")
    with pytest.raises(ZsadError, match=message):
        module.load_trained_weights(str(tmp_path / "bad.pth"), AUTHORS_FORMAT)


def test_an_anomalyclip_file_is_refused(module, tmp_path):
    """AnomalyCLIP's learner has the same container and no meta-net: one line names what does not fit."""
    from lightning_modules.anomalyclip import AnomalyCLIPModule

    learner = authors_prompt_learner(AnomalyCLIPModule(tiny_anomalyclip_config()))
    torch.save({"prompt_learner": learner}, tmp_path / "anomalyclip.pth")
    with pytest.raises(ZsadError, match="FAPrompt authors' prompt learner"):
        module.load_trained_weights(str(tmp_path / "anomalyclip.pth"), AUTHORS_FORMAT)
