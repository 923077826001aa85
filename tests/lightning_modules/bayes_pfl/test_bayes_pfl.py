"""Bayes-PFL: the seeded stochastic inference, the authors' checkpoint format, the image-score rule and
a resume inside stage 2 with the tiny random-weight CLIP (the rest end to end: tests/test_every_method.py)."""

from __future__ import annotations

import signal

import pytest
import torch
from baselines_support import (
    FAST,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_backbone,
    write_method_experiment,
)

from datamodules.errors import ZsadError
from lightning_modules.bayes_pfl import BayesPFL, BayesPFLConfig, BayesPFLModule
from lightning_modules.bayes_pfl.model import combine_image_scores
from lightning_modules.bayes_pfl.official_checkpoint import zsad_name
from lightning_modules.bayes_pfl.spec import BAYES_PFL
from lightning_modules.stochastic import keyed_normal
from pipelines.cli import main
from tests_support import SendAt, interrupt_training_at


def _module(tiny_clip, **overrides) -> BayesPFLModule:
    model, tokenizer = tiny_clip
    settings = {"backbone": tiny_backbone(), "feature_layers": [2, 4, 6], "test_samples": 3} | overrides
    cfg = BayesPFLConfig(**settings)
    return BayesPFLModule(cfg, model=BayesPFL(cfg, model, tokenizer))


# --- stochastic inference ----------------------------------------------------------------------------------
def test_each_images_draws_depend_on_its_key_alone():
    keys = [
        ("mvtec", "a/test/good/000.png"),
        ("mvtec", "b/test/crack/001.png"),
        ("mvtec", "c/test/good/002.png"),
    ]
    together = keyed_normal(333, keys, (4, 8))
    alone = torch.cat([keyed_normal(333, [key], (4, 8)) for key in reversed(keys)]).flip(0)
    assert torch.equal(together, alone)
    assert not torch.equal(together, keyed_normal(334, keys, (4, 8)))
    assert not torch.equal(together[0], keyed_normal(333, [("visa", keys[0][1])], (4, 8))[0])


def test_an_images_scores_do_not_depend_on_its_batch(tiny_clip):
    """The same image alone or among others: the same draws, so the same map and score (to float rounding of
    the batched matmuls); a rerun is bit-identical."""
    model = _module(tiny_clip).model.eval()
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    keys = [("target", f"x/{i}.png") for i in range(3)]
    words = ["bottle", "metal nut", "screw"]

    def predict(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        features = model.encode_images(images[rows])
        eps = model.test_draws(333, "target", [keys[i] for i in rows], torch.device("cpu"))
        return model.predict_from_draws(features, [words[i] for i in rows], (32, 32), eps, stage=2)

    probability, maps = predict([0, 1, 2])
    for i in range(3):
        p, m = predict([i])
        torch.testing.assert_close(p[0], probability[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(m[0], maps[i], atol=1e-6, rtol=0)
    again = predict([0, 1, 2])
    assert torch.equal(again[0], probability) and torch.equal(again[1], maps)


def test_more_samples_average_more_prompts(tiny_clip):
    """test_samples R: R x bank texts per class, the image-agnostic draws shared by every image."""
    model = _module(tiny_clip, test_samples=5).model
    context, normal, abnormal = model.test_draws(1, "d", [("d", "a"), ("d", "b")], torch.device("cpu"))
    assert context.shape == (2, 5, model.dim) and normal.shape == abnormal.shape == (5, model.dim)
    features = model.encode_images(torch.randn(2, 3, 32, 32))
    z = model.sample_prompts(features["image"], context, normal, abnormal)
    texts = model.encode_texts(["bottle", "grid"], *z[:3])
    assert texts.shape == (2, 2 * 5 * model.bank, model.dim)


# --- the image-score rule -------------------------------------------------------------------------------------
def test_image_score_rule_is_their_per_category_min_max_mix():
    components = torch.tensor([[0.2, 0.5], [0.6, 0.1], [0.4, 0.9]], dtype=torch.float64)
    p = (components[:, 0] - 0.2) / (0.4 + 1e-8)
    k = (components[:, 1] - 0.1) / (0.8 + 1e-8)
    torch.testing.assert_close(combine_image_scores(components, 0.5), 0.5 * p + 0.5 * k)


# --- the authors' checkpoints ----------------------------------------------------------------------------------
def _their_state(module: BayesPFLModule) -> dict[str, torch.Tensor]:
    """A state dict named and shaped as their Context_Prompting's (copies and unused modules included)."""
    inverse = {}
    for name in module.trainable_state_keys():
        inverse[name.removeprefix("model.")] = None
    state: dict[str, torch.Tensor] = {}
    params = dict(module.named_parameters())
    generator = torch.Generator().manual_seed(0)
    their_names = [
        "prompt_context", "prompt_state_normal", "prompt_state_abnormal", "temperature_pixel", "temperature_image",
        *(f"{p}_encoder.weight_{h}.module.{i}.{t}" for p in ("context", "state") for h in ("mean", "log_variance")
          for i in (0, 2, 4) for t in ("weight", "bias")),
        *(f"PFL_context.amor_{x}.{t}" for x in "uwb" for t in ("weight", "bias")),
        *(f"PFL_{c}.{x}" for c in ("normal", "abnormal") for x in ("amor_u", "amor_w", "amor_b", "state")),
        *(f"{m}.{t}" for m in ("fuse.fuse_modules", "fuse.compress", "fuse.post_process", "class_mapping",
                               "image_mapping", "RCA.q_proj_pre") for t in ("weight", "bias")),
        *(f"RCA.linear_proj.{i}.weight" for i in range(3)),
    ]  # fmt: skip
    for name in their_names:
        ours = params[f"model.{zsad_name(name)}"]
        state[name] = torch.randn(ours.shape, generator=generator)
    width = module.model.dim
    state["context_decoder.weight_mean.module.0.weight"] = torch.randn(16, width, generator=generator)
    state["PFL_context.p_mu.0.weight"] = torch.randn(width, width, generator=generator)
    state["PFL_normal.encoder.weight_mean.module.0.weight"] = state[
        "state_encoder.weight_mean.module.0.weight"
    ]
    return state


def test_their_checkpoint_format_loads_into_stage_two(tiny_clip, tmp_path):
    module = _module(tiny_clip)
    state = _their_state(module)
    path = tmp_path / "train_visa.pth"
    torch.save({"MyModel": state}, path)
    module.load_trained_weights(str(path), BAYES_PFL.official_checkpoint)
    params = dict(module.named_parameters())
    for name, tensor in state.items():
        if zsad_name(name) is not None:
            assert torch.equal(params[f"model.{zsad_name(name)}"].detach(), tensor), name
    assert module.test_stage == 2  # their test.py: a file not named epoch_post_*_{stage}.pth is stage 2


def test_a_wrong_shape_or_an_unknown_entry_is_refused(tiny_clip, tmp_path):
    module = _module(tiny_clip)
    state = _their_state(module)
    state["prompt_context"] = torch.zeros(2, 5, module.model.dim)
    torch.save({"MyModel": state}, tmp_path / "shape.pth")
    with pytest.raises(ZsadError, match="prompt_context has shape"):
        module.load_trained_weights(str(tmp_path / "shape.pth"), BAYES_PFL.official_checkpoint)
    state = _their_state(module) | {"visual_prompt": torch.zeros(1)}
    torch.save({"MyModel": state}, tmp_path / "unknown.pth")
    with pytest.raises(ZsadError, match="unexpected entry 'visual_prompt'"):
        module.load_trained_weights(str(tmp_path / "unknown.pth"), BAYES_PFL.official_checkpoint)
    torch.save({"prompt_learner": {}}, tmp_path / "other.pth")
    with pytest.raises(ZsadError, match="no 'MyModel'"):
        module.load_trained_weights(str(tmp_path / "other.pth"), BAYES_PFL.official_checkpoint)


def test_text_block_checkpointing_changes_no_number(tiny_clip):
    """checkpoint_text_blocks (the memory switch that lets batch 32 fit 11 GB): same loss and gradients."""
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = _module(tiny_clip, checkpoint_text_blocks=checkpointing)
        model = module.model.train()
        torch.manual_seed(1)
        features = model.encode_images(torch.randn(2, 3, 32, 32))
        eps = model.training_draws(2, torch.device("cpu"))
        output = model.scores_from_draws(features, ["bottle", "grid"], (32, 32), 1, 1, eps)
        loss = model.loss(output, torch.tensor([0, 1]), (torch.rand(2, 32, 32) > 0.8).float())["loss"]
        loss.backward()
        results.append(
            (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    assert all(torch.equal(results[0][1][n], results[1][1][n]) for n in results[0][1])


def test_the_augmentation_and_its_mosaic_follow_their_dataset_class():
    from datamodules.augment import TrainAugmentation
    from datamodules.mosaic import Mosaic
    from lightning_modules.bayes_pfl.spec import train_augmentation

    mosaic = Mosaic(0.4, label="any_tile")  # combine_img's item is anomalous
    assert train_augmentation(BayesPFLConfig(), "mvtec") == TrainAugmentation("bayes_pfl", mosaic)
    assert train_augmentation(BayesPFLConfig(), "visa") == TrainAugmentation("bayes_pfl", None)
    assert train_augmentation(BayesPFLConfig(augmentation="none"), "mvtec") is None


@pytest.mark.slow
def test_a_training_stopped_in_stage_two_resumes_bit_identically(tmp_path, synthetic_pair, monkeypatch):
    """Ctrl-C inside stage 2 (its own Adam, the stage-1 schedule still stepping), the augmentation and mosaic
    on (bayes_pfl_tiny): the resumed run ends with the uninterrupted run's parameters and stage.
    (An interruption in stage 1, results, reload, DDP: tests/test_every_method.py.)"""
    source, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "bayes_pfl_tiny", source, target)
    common = [*FAST, "trainer.max_epochs=2", "method.mosaic_rate=0.5"]
    reference, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    assert main(["train", str(experiment), *common, f"run_dir={reference}"]) == 0
    interrupt_training_at(monkeypatch, SendAt(1, 1, signal.SIGINT))  # after epoch 1's second batch
    assert main(["train", str(experiment), *common, f"run_dir={run_dir}"]) == 130
    interrupt_training_at(monkeypatch, None)
    assert main(["train", str(experiment), *common, f"run_dir={run_dir}"]) == 0
    ours = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)
    assert ours["bayes_pfl_stage"] == expected["bayes_pfl_stage"] == 2
    assert ours["state_dict"].keys() == expected["state_dict"].keys()
    different = [k for k, v in expected["state_dict"].items() if not torch.equal(ours["state_dict"][k], v)]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different}"


def test_a_loco_rows_prompt_word_is_its_object_folder_not_the_row(tiny_clip):
    """Bayes-PFL's words are the category folder (their class name) unless category_words maps it: MVTec
    LOCO's rows are one folder, so "_logical"/"_structural" never enter the prompts."""
    from types import SimpleNamespace

    module = _module(tiny_clip)
    datamodule = SimpleNamespace(
        categories=["breakfast_box_logical", "breakfast_box_structural"],
        category_folders=["breakfast_box", "breakfast_box"],
    )
    module.__dict__["_trainer"] = SimpleNamespace(datamodule=datamodule)
    assert module.words(torch.tensor([0, 1])) == ["breakfast_box", "breakfast_box"]
