"""AA-CLIP against the authors' outputs (tests/fixtures/parity/aa_clip.npz, written by
benchmarks/parity_aa_clip.py from their BaseSingleClassDataset, AdaptedCLIP, test loop, metrics_eval and one
step of each training stage) on the same random-weight CLIP, initial adapters (theirs, loaded by name) and
generated image files: zsad alone runs here, in float32 on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_aa_clip as pa  # noqa: E402
import parity_support as ps  # noqa: E402


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pa.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(tmp_path_factory.mktemp("parity"), fixture, pa.state_dict())


@pytest.fixture(scope="module")
def ours(fixture, root) -> dict[str, np.ndarray]:
    outputs = pa.zsad_outputs(root, pa.initial_state(fixture))
    return outputs | pa.sampled(outputs)


def test_inputs_are_the_same_files_and_masks(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])


@pytest.mark.parametrize(
    "name",
    [
        "text",
        "patches_sampled",
        "image_feature",
        "raw_scores",
        "maps_sampled",
        "image_scores",
        "surgery_sampled",
    ],
)
def test_features_maps_and_scores_match_the_authors(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= ps.MAPS_ATOL, name


def test_metrics_match_the_authors(fixture, ours):
    """Their unrounded sklearn pixel / image AUROC and AP per class (image: metrics_eval's fused scores)."""
    assert ps.max_abs_delta(fixture["metrics"], ours["metrics"]) <= 1e-6


@pytest.mark.parametrize("stage", ["text", "image"])
def test_training_steps_match_the_authors(fixture, ours, stage):
    """Each stage's loss, every gradient (within 1e-5 of each tensor's largest) and every parameter after
    Adam (betas 0.5 / 0.999, lr 1e-5 text, 5e-4 image)."""
    loss = fixture[f"{stage}_step_loss"]
    assert ps.max_abs_delta(loss, ours[f"{stage}_step_loss"]) <= 1e-5 * max(1.0, abs(float(loss)))
    theirs, mine = pa.step_tensors(fixture, stage, "grad"), pa.step_tensors(ours, stage, "grad")
    assert sorted(theirs) == sorted(mine) and theirs
    for name, value in theirs.items():
        assert np.abs(value - mine[name]).max() <= 1e-5 * np.abs(value).max(), name
    theirs, mine = pa.step_tensors(fixture, stage, "param"), pa.step_tensors(ours, stage, "param")
    assert sorted(theirs) == sorted(mine)
    assert max(ps.max_abs_delta(theirs[k], mine[k]) for k in theirs) <= 1e-6


def test_a_changed_default_fails_the_comparison(fixture, root):
    """The comparison can fail: V-V attention over each image's tokens (not over the batch, as their
    tensor layout does) moves stage 1's features, the loss summed over all layers (not the last one their
    loop keeps) its loss, and bilinear position-embedding interpolation (not their antialiased bicubic) the
    maps."""
    from datamodules import AnomalyDataModule, DataConfig

    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        pa.IMAGE_SIZE,
        pa.preprocessing(),
    )
    batch = next(iter(data.test_dataloader()))
    paths = [str(Path(p).relative_to(root)) for p in batch["image_path"]]
    index = [paths.index(p) for p in pa.TEXT_BATCH]
    images, masks, ids = batch["image"][index], batch["mask"][index], batch["category_id"][index]
    initial = pa.initial_state(fixture)

    model = pa.zsad_model(initial, surgery_attention_over="tokens")
    surgery = torch.stack(model.surgery_patches(images)).numpy()[:, :, ::16]
    assert ps.max_abs_delta(fixture["surgery_sampled"], surgery) > 1e-2

    model = pa.zsad_model(initial, text_loss_layers="all")
    model.set_classes(list(data.categories))
    loss = model.text_stage_loss(images, masks, ids)["loss"].detach()
    assert ps.max_abs_delta(fixture["text_step_loss"], loss) > 1e-1

    model = pa.zsad_model(initial, backbone_interpolation="bilinear")
    model.set_classes(list(data.categories))
    with torch.no_grad():
        _, maps = model.predict(batch["image"], batch["category_id"], (pa.IMAGE_SIZE,) * 2, medical=False)
    assert ps.max_abs_delta(fixture["maps_sampled"], maps.numpy()[:, ::9, ::9]) > 1e-3


def test_their_checkpoint_files_load_by_their_names(fixture, tmp_path):
    """The files their train.py writes (``text_adapter.pth``, ``image_adapter_{epoch}.pth``), holding the
    parameters their one-step run reached under their own names, load through the reader `zsad test` uses;
    an image file without its text file beside it is refused in one line."""
    from datamodules.errors import ZsadError
    from lightning_modules.aa_clip.module import AAClipModule
    from lightning_modules.registry import get_method

    text, image = pa.step_tensors(fixture, "text", "param"), pa.step_tensors(fixture, "image", "param")
    to_torch = lambda arrays: {k: torch.from_numpy(v) for k, v in arrays.items()}  # noqa: E731
    torch.save(
        {"epoch": 1, "image_adapter": to_torch(image), "image_optimizer": {}},
        tmp_path / "image_adapter_1.pth",
    )
    model = pa.zsad_model(pa.initial_state(fixture))
    module = AAClipModule(model.cfg, model=model)
    reader = get_method("aa_clip").official_checkpoint
    with pytest.raises(ZsadError, match="needs the text_adapter.pth"):
        module.load_trained_weights(str(tmp_path / "image_adapter_1.pth"), reader)
    torch.save(
        {"epoch": 5, "text_adapter": to_torch(text), "text_optimizer": {}}, tmp_path / "text_adapter.pth"
    )
    module.load_trained_weights(str(tmp_path / "image_adapter_1.pth"), reader)
    adapters = module.model.adapters
    for side, theirs in (("text_adapter", text), ("image_adapter", image)):
        state = getattr(adapters, side).state_dict()
        assert sorted(state) == sorted(theirs)
        for name, value in theirs.items():
            np.testing.assert_array_equal(state[name].numpy(), value, err_msg=name)
