"""VCP-CLIP: the model's pieces, the authors' augmentation, their checkpoint format, training end to end."""

from __future__ import annotations

import json
import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from baselines_support import (
    FAST,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_backbone,
    write_method_experiment,
)

from datamodules import AnomalyDataModule, DataConfig
from datamodules.augment import AugmentedDataset, TrainAugmentation
from datamodules.errors import ZsadError
from datamodules.mosaic import Mosaic
from lightning_modules.registry import get_method
from lightning_modules.vcp_clip import VCPCLIP, VCPCLIPConfig, VCPCLIPModule
from lightning_modules.vcp_clip.model import top_k_mean
from lightning_modules.vcp_clip.spec import VCP_CLIP
from pipelines.cli import main
from tests_support import SendAt, interrupt_training_at

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_support as ps  # noqa: E402
import parity_vcp_clip as pvc  # noqa: E402


def _tiny(tiny_clip, **overrides) -> VCPCLIP:
    model, tokenizer = tiny_clip
    cfg = VCPCLIPConfig(backbone=tiny_backbone(), feature_layers=[3, 6], image_score_top_k=8, **overrides)
    return VCPCLIP(cfg, model, tokenizer)


def test_every_trainable_part_gets_a_gradient_and_dropout_only_trains(tiny_clip):
    vcp = _tiny(tiny_clip)
    images = torch.randn(2, 3, 32, 32)
    vcp.train()
    loss = vcp.loss(vcp(images, (32, 32)), (torch.rand(2, 32, 32) > 0.8).float())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vcp.trainable_parameters())
    assert not any(p.requires_grad for p in vcp.clip.parameters())
    vcp.eval()
    first, again = vcp.predict(images, (32, 32)), vcp.predict(images, (32, 32))
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # no dropout at test time
    assert first[1].shape == (2, 32, 32)


def test_each_image_gets_its_own_texts_from_its_global_embedding(tiny_clip):
    vcp = _tiny(tiny_clip).eval()
    embeddings = torch.randn(3, vcp.vision.output_dim)
    texts = vcp.encode_texts(embeddings)
    assert texts.shape == (3, 2, vcp.vision.output_dim)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(3, 2))
    torch.testing.assert_close(vcp.encode_texts(embeddings[1:2]), texts[1:2], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(texts[0], texts[1])
    without = _tiny(tiny_clip, use_global=False).eval()
    without.load_state_dict(vcp.state_dict())
    shared = without.encode_texts(embeddings)
    torch.testing.assert_close(shared[0], shared[2])  # the learnable vectors alone: one text for all


def test_image_score_is_the_sum_of_both_maps_top_k_means():
    maps = torch.arange(16.0).view(1, 4, 4)
    assert top_k_mean(maps, 3).item() == pytest.approx((15 + 14 + 13) / 3)
    with pytest.raises(ZsadError, match="image_score_top_k 17 exceeds the 16 pixels"):
        top_k_mean(maps, 17)


# --- the authors' augmentation ----------------------------------------------------------------------------
def _augmented(root: Path, augmentation: TrainAugmentation) -> AugmentedDataset:
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0), 32, augmentation=augmentation, seed=5
    )
    dataset = data.train_dataset()
    assert isinstance(dataset, AugmentedDataset)
    return dataset


def test_augmentation_is_a_function_of_seed_epoch_and_sample(tmp_path):
    root = ps.write_parity_images(tmp_path / "mvtec")
    dataset = _augmented(root, TrainAugmentation(pipeline="vcp_clip"))
    state = random.getstate(), np.random.get_state()[1].copy()
    first = [dataset[(1, i)]["image"] for i in range(len(dataset))]
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    again = [dataset[(1, i)]["image"] for i in reversed(range(len(dataset)))][::-1]
    assert all(
        torch.equal(a, b) for a, b in zip(first, again, strict=True)
    )  # order and history do not matter
    other_epoch = [dataset[(2, i)]["image"] for i in range(len(dataset))]
    assert not all(torch.equal(a, b) for a, b in zip(first, other_epoch, strict=True))


def test_mosaic_pastes_four_anomalous_images_of_the_category(tmp_path):
    root = ps.write_parity_images(tmp_path / "mvtec")
    plain = AnomalyDataModule(DataConfig(name="synthetic", root=str(root), num_workers=0), 32).train_dataset()
    dataset = _augmented(root, TrainAugmentation(mosaic=Mosaic(1.0)))  # the mosaic alone
    for i in range(len(dataset)):
        item = dataset[(0, i)]
        assert item["mask"].sum() > 0  # every tile is anomalous
        assert item["category_id"] == plain[i]["category_id"]
        assert item["label"] == plain[i]["label"]  # the replaced item's label (their loss uses none)
    pools = dataset.tiles.by_category
    assert sorted(pools) == sorted(dataset.categories) and all(
        dataset.records[p].label == 1 and dataset.records[p].category == c
        for c, positions in pools.items()
        for p in positions
    )


def test_the_spec_hands_the_mosaic_only_to_the_datasets_of_their_mvtec_class():
    assert get_method("vcp_clip") is VCP_CLIP
    cfg = VCPCLIPConfig()
    assert VCP_CLIP.augmentation_on(cfg, "mvtec") == TrainAugmentation("vcp_clip", Mosaic(0.2))
    assert VCP_CLIP.augmentation_on(cfg, "visa") == TrainAugmentation("vcp_clip", None)
    assert VCP_CLIP.augmentation_on(VCPCLIPConfig(augmentation="none"), "mvtec") is None
    stock = VCPCLIPConfig(albumentations="1.4.24")
    assert VCP_CLIP.augmentation_on(stock, "visa").albumentations == "1.4.24"


# --- the authors' checkpoint format -----------------------------------------------------------------------
def _parity_module():
    import open_clip

    pvc.register_model()
    clip = open_clip.create_model(pvc.MODEL, pretrained=None)
    clip.load_state_dict(pvc.state_dict())
    cfg = pvc.zsad_config()
    return VCPCLIPModule(cfg, model=VCPCLIP(cfg, clip, open_clip.get_tokenizer(pvc.MODEL)))


def _their_file(tmp_path: Path, checkpoint: dict) -> Path:
    """Saved as their train.py does: three state dicts and the CLIP's "prompt" parameters at the top."""
    saved = {
        key: value if isinstance(value, dict) else torch.nn.Parameter(value)
        for key, value in checkpoint.items()
    }
    path = tmp_path / "train_visa.pth"
    torch.save(saved, path)
    return path


def test_the_authors_checkpoint_loads_with_names_and_shapes_checked(tmp_path):
    fixture = ps.load_fixture(pvc.FIXTURE)  # the authors' initial state, written by their code
    checkpoint = pvc.initial_checkpoint(fixture)
    module = _parity_module()
    module.load_trained_weights(str(_their_file(tmp_path, checkpoint)), VCP_CLIP.official_checkpoint)
    params = dict(module.model.named_parameters())
    torch.testing.assert_close(
        params["post_vcp.key.weight"], checkpoint["Zero_try"]["k_proj_pre_1.weight"][..., 0]
    )
    torch.testing.assert_close(params["deep_prompts.deep"], checkpoint["deep_prompt_embeddings"])
    torch.testing.assert_close(params["pre_log_scale"], checkpoint["New_Lan_Embed"]["prompt_temp"])

    wrong = {**checkpoint, "prompt_embeddings": torch.zeros(1, 2, 64)}
    with pytest.raises(ZsadError, match=r"deep_prompts.shallow has shape \(1, 2, 64\)"):
        module.load_trained_weights(str(_their_file(tmp_path, wrong)), VCP_CLIP.official_checkpoint)
    unknown = {**checkpoint, "visual_prompt": torch.zeros(3)}
    with pytest.raises(ZsadError, match="unexpected entry 'visual_prompt'"):
        module.load_trained_weights(str(_their_file(tmp_path, unknown)), VCP_CLIP.official_checkpoint)
    with pytest.raises(ZsadError, match="no 'New_Lan_Embed'"):
        module.load_trained_weights(
            str(_their_file(tmp_path, {"trainable_linearlayer": {}})), VCP_CLIP.official_checkpoint
        )


# --- end to end -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("augmentation", ["authors", "none"])
def test_the_runner_hands_the_augmentation_to_the_training_datamodule(
    tmp_path, synthetic_pair, monkeypatch, augmentation
):
    """With the authors' augmentation (and the mosaic) the feature cache steps aside; without, it is used.
    (Results, trainable-only checkpoints and their reload: tests/test_every_method.py.)"""
    from lightning_modules.feature_cache import CachedTraining
    from pipelines import runner

    source, target = synthetic_pair
    caches: list[CachedTraining] = []

    class Recorded(CachedTraining):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            caches.append(self)

    monkeypatch.setattr(runner, "CachedTraining", Recorded)
    experiment = write_method_experiment(tmp_path, "vcp_clip_tiny", source, target)
    run_dir = tmp_path / "run"
    options = [f"method.augmentation={augmentation}", "method.mosaic_datasets=[synthetic]"]
    assert main(["train", str(experiment), *FAST, f"run_dir={run_dir}", *options]) == 0
    if augmentation == "none":
        assert caches[0].status == "cached (built)"
    else:  # the datamodule was handed the spec's augmentation, and says why the cache steps aside
        assert caches[0].status.startswith("bypassed: the method's training augmentation")


@pytest.mark.slow
def test_augmented_accumulated_training_resumes_bit_identically(tmp_path, synthetic_pair, monkeypatch):
    """The authors' augmentation (mosaic included) and gradient accumulation: Ctrl-C inside an accumulation
    window stops after the window's optimizer step, and the resumed run ends with the same parameters."""
    source, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "vcp_clip_tiny", source, target)
    common = [
        *FAST,
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=2",
        "method.mosaic_datasets=[synthetic]",
        "method.mosaic_rate=0.5",
    ]
    reference, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    assert main(["run", str(experiment), *common, f"run_dir={reference}"]) == 0
    interrupt_training_at(monkeypatch, SendAt(1, 0, signal.SIGINT))  # Ctrl-C after epoch 1's first batch
    assert main(["run", str(experiment), *common, f"run_dir={run_dir}"]) == 130
    saved = sorted((run_dir / "checkpoints" / "resume").glob("step-*.ckpt"))[-1]
    # 4 batches per epoch (14 images, batch 4): 2 optimizer steps in epoch 0, the signal after epoch 1's first
    # batch waits for the window's step: 3 steps saved, none half-accumulated
    assert torch.load(saved, weights_only=False)["global_step"] == 3
    interrupt_training_at(monkeypatch, None)
    assert main(["run", str(experiment), *common, f"run_dir={run_dir}"]) == 0
    ours = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in expected), "trainable parameters differ"


def _as_their_file(module: VCPCLIPModule, path: Path) -> Path:
    """The module's trainable state written as their train.py writes a checkpoint."""
    state = {
        k.removeprefix("model."): v.detach().clone() for k, v in module.named_parameters() if v.requires_grad
    }
    post = {"query": "q_proj_pre", "key": "k_proj_pre_1", "value": "v_proj_pre_1", "out": "proj_post_t"}
    saved = {
        "trainable_linearlayer": {
            k.replace("heads.", "fc."): v for k, v in state.items() if k.startswith("heads.")
        },
        "New_Lan_Embed": {
            "prompt_query": state["pre_vcp.query"],
            "prompt_temp": state["pre_log_scale"],
            "prompt_linear1.fc.weight": state["pre_vcp.conv.weight"],
            "prompt_linear1.fc.bias": state["pre_vcp.conv.bias"],
        },
        "Zero_try": {"prompt_temp_l1": state["post_log_scale"]}
        | {f"{theirs}.weight": state[f"post_vcp.{ours}.weight"][..., None] for ours, theirs in post.items()}
        | {f"{theirs}.bias": state[f"post_vcp.{ours}.bias"] for ours, theirs in post.items()},
        "prompt_embeddings": torch.nn.Parameter(state["deep_prompts.shallow"]),
        "deep_prompt_embeddings": torch.nn.Parameter(state["deep_prompts.deep"]),
        "prompt_text_projection": torch.nn.Parameter(torch.zeros(64, 64)),
    } | {f"prompt_{k}": torch.nn.Parameter(state[f"deep_prompts.{k}"]) for k in ("proj.weight", "proj.bias")}
    saved |= {
        f"prompt_{k}": torch.nn.Parameter(state[f"deep_prompts.{k}"]) for k in ("norm.weight", "norm.bias")
    }
    torch.save(saved, path)
    return path


def test_zsad_test_evaluates_a_file_in_the_authors_format(tmp_path, synthetic_pair):
    from pipelines import runner
    from pipelines.config import compose, to_object

    source, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "vcp_clip_tiny", source, target)
    cfg = to_object(compose(experiment, FAST))
    module = runner.build_module(cfg, VCP_CLIP)
    torch.manual_seed(4)
    for p in module.model.trainable_parameters():
        p.data.normal_()
    path = _as_their_file(module, tmp_path / "train_visa.pth")
    assert main(["test", str(experiment), *FAST, f"checkpoint={path}", f"run_dir={tmp_path / 't'}"]) == 0
    mean = json.loads((tmp_path / "t" / "results.json").read_text())["targets"]["synthetic"]["mean"]
    assert mean["image_auroc"] is not None and mean["aupro_cflow"] is not None
    fresh = runner.build_module(cfg, VCP_CLIP)
    fresh.load_trained_weights(str(path), VCP_CLIP.official_checkpoint)
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert torch.equal(dict(fresh.named_parameters())[name], p), name
