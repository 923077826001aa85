"""The AnomalyCLIP authors' prompt checkpoints ({"prompt_learner": state_dict}) load into zsad's prompts."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ZsadError
from lightning_modules.anomalyclip import AnomalyCLIPModule
from lightning_modules.base import ZeroShotModule
from lightning_modules.registry import get_method
from tests_support import authors_prompt_learner, tiny_anomalyclip_config

AUTHORS_FORMAT = get_method("anomalyclip").official_checkpoint  # the reader `zsad test` uses


def test_authors_checkpoint_maps_onto_the_prompts(tmp_path):
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    learner = authors_prompt_learner(module)
    path = tmp_path / "epoch_15.pth"
    torch.save({"prompt_learner": learner}, path)
    module.load_trained_weights(str(path), AUTHORS_FORMAT)
    prompts = module.model.prompts
    assert torch.equal(prompts.normal_context, learner["ctx_pos"][0, 0])
    assert torch.equal(prompts.abnormal_context, learner["ctx_neg"][0, 0])
    assert len(prompts.deep_tokens) == 8
    for j, deep in enumerate(prompts.deep_tokens):
        assert torch.equal(deep, learner[f"compound_prompts_text.{j}"])
    # normal (ctx_pos) and abnormal (ctx_neg) are spliced into the right prompts
    embeddings = prompts()
    assert torch.equal(embeddings[0, 1 : 1 + 12], learner["ctx_pos"][0, 0])
    assert torch.equal(embeddings[1, 1 : 1 + 12], learner["ctx_neg"][0, 0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(ctx_pos=torch.zeros(1, 1, 12, 7)), r"normal_context has shape \(12, 7\)"),
        (lambda s: s.update(ctx_neg=torch.zeros(12, 64)), r"ctx_neg has shape \(12, 64\), expected \[1, 1"),
        (lambda s: s.pop("compound_prompts_text.7"), "missing .'model.prompts.deep_tokens.7'"),
        (lambda s: s.update(extra=torch.zeros(1)), "unexpected entry 'extra'"),
        (lambda s: s["tokenized_prompts_neg"][0, 0].__setitem__(3, 5), "tokenized_prompts_neg differ"),
    ],
)
def test_a_file_that_does_not_fit_is_refused_clearly(tmp_path, change, message):
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    learner = authors_prompt_learner(module)
    change(learner)
    torch.save({"prompt_learner": learner}, tmp_path / "bad.pth")
    with pytest.raises(ZsadError, match=message):
        module.load_trained_weights(str(tmp_path / "bad.pth"), AUTHORS_FORMAT)


def test_other_files_are_refused(tmp_path):
    module = AnomalyCLIPModule(tiny_anomalyclip_config())
    torch.save({"trainable_linearlayer": {"fc.0.weight": torch.zeros(2, 2)}}, tmp_path / "vand.pth")
    with pytest.raises(ZsadError, match="neither a zsad checkpoint .* nor the AnomalyCLIP authors'"):
        module.load_trained_weights(str(tmp_path / "vand.pth"), AUTHORS_FORMAT)
    shifted = AnomalyCLIPModule(tiny_anomalyclip_config(deep_prompt_blocks=[3, 4, 5, 6, 7, 8, 9]))
    learner = authors_prompt_learner(shifted)
    torch.save({"prompt_learner": learner}, tmp_path / "shifted.pth")
    with pytest.raises(ZsadError, match="start at text block 2"):
        shifted.load_trained_weights(str(tmp_path / "shifted.pth"), AUTHORS_FORMAT)


class _NoReleasedWeights(ZeroShotModule):
    method_name = "plain"

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))


def test_a_method_without_an_authors_format_names_it(tmp_path):
    torch.save({"prompt_learner": {}}, tmp_path / "epoch_15.pth")
    with pytest.raises(ZsadError, match="not a zsad checkpoint .* method 'plain' reads no other format"):
        _NoReleasedWeights().load_trained_weights(str(tmp_path / "epoch_15.pth"))
