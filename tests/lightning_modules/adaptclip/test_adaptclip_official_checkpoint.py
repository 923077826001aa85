"""The AdaptCLIP authors' checkpoints ({"textual_learner", "visual_learner", "pq_learner"}, train.py's
``epoch_{e}.pth``) load into zsad's adapters: a file their own train.py wrote (the parity fixture's), a file
in their format for the tiny config through ``zsad test checkpoint=``, and clear refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from baselines_support import write_method_experiment

from datamodules.errors import ZsadError
from lightning_modules.adaptclip import AdaptCLIPModule
from lightning_modules.registry import get_method
from pipelines.cli import main
from pipelines.config import compose, to_object

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_adaptclip as pa  # noqa: E402
import parity_support as ps  # noqa: E402

AUTHORS_FORMAT = get_method("adaptclip").official_checkpoint  # the reader `zsad test` uses


def tiny_module(**overrides) -> AdaptCLIPModule:
    cfg = to_object(
        compose("demo", ["method=adaptclip_tiny", *(f"method.{k}={v}" for k, v in overrides.items())])
    ).method
    torch.manual_seed(0)
    return AdaptCLIPModule(cfg)


def authors_file(module: AdaptCLIPModule, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """Random adapters of ``module``'s shapes, named and laid out as the authors' train.py saves them (their
    PQ heads: one module repeated per layer, so every layer's entry holds the same tensors)."""
    g = torch.Generator().manual_seed(seed)
    model = module.model

    def rand(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g) if t.is_floating_point() else t.clone() + 3

    textual = {
        "ctx_pos": rand(model.textual.normal_context)[None, None],
        "ctx_neg": rand(model.textual.abnormal_context)[None, None],
        "token_prefix_pos": torch.zeros(1, 1, 1, 7),
        "token_suffix_pos": torch.zeros(1, 1, 60, 7),
        "token_prefix_neg": torch.zeros(1, 1, 1, 7),
        "token_suffix_neg": torch.zeros(1, 1, 60, 7),
        "tokenized_prompts_pos": model.textual.token_ids[0].reshape(1, 1, -1).int(),
        "tokenized_prompts_neg": model.textual.token_ids[1].reshape(1, 1, -1).int(),
    }
    visual = {
        k.replace("local_adapter.", "local_adater."): rand(v) for k, v in model.visual.state_dict().items()
    }
    pq: dict[str, torch.Tensor] = {}
    heads = {k: rand(v) for k, v in model.pq.state_dict().items() if not k.startswith("norms.")}
    for layer in range(len(module.cfg.feature_layers)):
        for k, v in model.pq.norms[layer].state_dict().items():
            pq[f"sharebn.{layer}.{k}"] = rand(v)
        for k, v in heads.items():
            kind, _, rest = k.split(".", 2)  # local_heads.0.<rest>
            pq[f"{kind.replace('_heads', '_adapter')}.{layer}.{rest}"] = v.clone()
    return {"textual_learner": textual, "visual_learner": visual, "pq_learner": pq}


def test_a_file_their_train_py_wrote_loads():
    """The parity fixture keeps what their train.py saved (epoch_1.pth, PQ heads' first copy)."""
    fixture = ps.load_fixture(pa.FIXTURE)
    saved = pa.checkpoint_of(fixture, "trained/")
    module = pa.zsad_module()
    state = AUTHORS_FORMAT(module, saved, "epoch_1.pth")
    assert set(state) == module.trainable_state_keys()
    assert torch.equal(state["model.textual.normal_context"], saved["textual_learner"]["ctx_pos"][0, 0])
    assert torch.equal(
        state["model.visual.local_adapter.fc.0.weight"], saved["visual_learner"]["local_adater.fc.0.weight"]
    )
    assert torch.equal(state["model.pq.norms.3.running_var"], saved["pq_learner"]["sharebn.3.running_var"])


def test_zsad_test_evaluates_the_authors_file(tmp_path, synthetic_pair):
    module = tiny_module()
    checkpoint = authors_file(module)
    path = tmp_path / "epoch_15.pth"
    torch.save(checkpoint, path)
    module.load_trained_weights(str(path), AUTHORS_FORMAT)
    model = module.model
    assert torch.equal(model.textual.abnormal_context, checkpoint["textual_learner"]["ctx_neg"][0, 0])
    assert torch.equal(
        model.visual.local_adapter.fc[3].weight, checkpoint["visual_learner"]["local_adater.fc.3.weight"]
    )
    assert torch.equal(
        model.pq.local_heads[0][0].weight, checkpoint["pq_learner"]["local_adapter.2.0.weight"]
    )
    assert torch.equal(model.pq.norms[1].running_mean, checkpoint["pq_learner"]["sharebn.1.running_mean"])
    _, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "adaptclip_tiny", None, target)
    common = ["logger.wandb.mode=disabled", "trainer.enable_progress_bar=false", f"checkpoint={path}"]
    for shots in (0, 1):
        run_dir = tmp_path / f"run{shots}"
        args = ["test", str(experiment), *common, f"protocol.shots={shots}", f"run_dir={run_dir}"]
        assert main(args) == 0
        results = json.loads((run_dir / "results.json").read_text())
        targets = results["draws"][0]["targets"] if shots else results["targets"]
        assert set(targets["synthetic"]["categories"]) == {"ring", "cells"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["textual_learner"].update(ctx_pos=torch.zeros(1, 1, 12, 7)),
            r"normal_context has shape \(12, 7\)",
        ),
        (lambda c: c["textual_learner"].update(ctx_neg=torch.zeros(12, 64)), r"ctx_neg has shape \(12, 64\)"),
        (
            lambda c: c["textual_learner"]["tokenized_prompts_neg"][0, 0].__setitem__(3, 5),
            "tokenized_prompts_neg differ",
        ),
        (
            lambda c: c["visual_learner"].pop("global_adapter.fc.0.weight"),
            "missing .'model.visual.global_adapter",
        ),
        (
            lambda c: c["pq_learner"].update({"sharebn.9.weight": torch.zeros(64)}),
            "unexpected .'model.pq.norms.9",
        ),
        (lambda c: c["pq_learner"]["local_adapter.1.0.weight"].add_(1.0), "heads differ between layers"),
        (
            lambda c: c["pq_learner"].update(
                {f"local_adapter.{i}.0.weight": torch.zeros(3, 64, 3, 3) for i in range(4)}
            ),
            r"has shape \(3, 64, 3, 3\)",
        ),
        (lambda c: c.pop("pq_learner"), "nor the AdaptCLIP authors' adapters .no 'pq_learner'"),
    ],
)
def test_a_file_that_does_not_fit_is_refused_clearly(tmp_path, change, message):
    module = tiny_module()
    checkpoint = authors_file(module)
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ZsadError, match=message):
        module.load_trained_weights(str(tmp_path / "bad.pth"), AUTHORS_FORMAT)


def test_unshared_heads_read_each_layers_copy(tmp_path):
    module = tiny_module(pq_share_heads=False)
    checkpoint = authors_file(tiny_module())
    checkpoint["pq_learner"]["local_adapter.2.0.weight"] = (
        checkpoint["pq_learner"]["local_adapter.2.0.weight"] + 1
    )
    torch.save(checkpoint, tmp_path / "unshared.pth")
    module.load_trained_weights(str(tmp_path / "unshared.pth"), AUTHORS_FORMAT)
    assert torch.equal(
        module.model.pq.local_heads[2][0].weight, checkpoint["pq_learner"]["local_adapter.2.0.weight"]
    )
    assert not torch.equal(module.model.pq.local_heads[1][0].weight, module.model.pq.local_heads[2][0].weight)
