"""Bayes-PFL against the authors' outputs (tests/fixtures/parity/bayes_pfl.npz, written by
benchmarks/parity_bayes_pfl.py from their re-packed data, MyDataset, Load_CLIP, Context_Prompting, test.py's
test() and two steps of train.py's loop) on the same random-weight CLIP, initial state, image files and
Monte-Carlo draws: zsad alone runs here, in float32 on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_bayes_pfl as pb  # noqa: E402
import parity_support as ps  # noqa: E402

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pb.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(tmp_path_factory.mktemp("parity"), fixture, pb.state_dict())


def _zsad(fixture, root, train: bool = True, **overrides) -> dict:
    checkpoint, paths = pb.initial_checkpoint(fixture), list(fixture["train_paths"])
    outputs = pb.zsad_outputs(root, checkpoint, paths, pb.zsad_config(**overrides), train=train)
    order = [list(outputs["paths"]).index(p) for p in fixture["paths"]]  # zsad's rows in their order
    sampled = {k: np.asarray(v)[order] for k, v in outputs.items() if k in (*pb.COMPARED, *pb.FINAL)}
    sampled["images"] = sampled["images"][:, :, :: pb.IMAGE_SAMPLE, :: pb.IMAGE_SAMPLE]
    sampled["patch_tokens"] = sampled["patch_tokens"][:, :, :: pb.TOKEN_SAMPLE]
    for key in ("raw_maps", "maps", "masks"):
        sampled[key] = sampled[key][:, :: pb.SAMPLE, :: pb.SAMPLE]
    sampled["texts"] = sampled["texts"].reshape(fixture["texts"].shape)
    return outputs | sampled


@pytest.fixture(scope="module")
def ours(fixture, root) -> dict:
    return _zsad(fixture, root)


def test_the_images_the_model_sees_are_those_of_their_repacked_copies(fixture, ours):
    """Their make_VAND re-encodes every image as BMP and merges the defect folders; zsad reads the raw
    layout: same files, same preprocessed pixels, same masks."""
    assert sorted(ours["paths"].tolist()) == sorted(fixture["paths"].tolist())
    assert ps.max_abs_delta(fixture["images"], ours["images"]) == 0.0
    assert ps.max_abs_delta(fixture["masks"], ours["masks"]) == 0.0
    np.testing.assert_array_equal(ps.mask_sums(np.asarray(ours["masks"])) > 0, fixture["labels"] == 1)


@pytest.mark.parametrize("name", [*pb.COMPARED[2:], *pb.FINAL])
def test_features_texts_maps_and_scores_match_the_authors(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape, name
    assert ps.max_abs_delta(fixture[name], ours[name]) <= TOLERANCE, name


def test_two_training_steps_match_the_authors(fixture, ours):
    """Loss (and its four terms), every gradient and every parameter after the second step (the first runs at
    the warm-up's lr 0), learning rates of the schedule."""
    for key in ("step_loss", "step_loss_parts", "step_lr"):
        assert ps.max_abs_delta(fixture[key], ours[key]) <= TOLERANCE, key
    grads = {ours["zsad_name"](k.split("|", 1)[1]): v for k, v in fixture.items() if k.startswith("grad1|")}
    params = {ours["zsad_name"](k.split("|", 1)[1]): v for k, v in fixture.items() if k.startswith("param1|")}
    grads.pop(None, None)
    params.pop(None, None)
    assert set(grads) == set(ours["step_grads"][1]) == set(params)
    for name, grad in grads.items():
        assert ps.max_abs_delta(grad, ours["step_grads"][1][name].reshape(grad.shape)) <= TOLERANCE, name
        assert (
            ps.max_abs_delta(params[name], ours["step_params"][1][name].reshape(grad.shape)) <= TOLERANCE
        ), name


def test_zsad_metrics_on_their_maps_equal_theirs(fixture):
    """Pixel and image AUROC / AP (sklearn in their calcuate_metric_pixel) exactly; the 200-threshold AUPRO of
    their (unused) cal_pro_score within its threshold grid's float noise."""
    categories = list(fixture["metric_objects"])
    ids = np.array([categories.index(c) for c in fixture["cls"]])
    metrics = pb.evaluate(
        categories, ids, fixture["image_scores"], fixture["labels"], fixture["maps"], fixture["masks"], None
    )
    exact = np.array([[metrics[f"{c}/{m}"] for m in pb.METRICS] for c in categories])
    assert ps.max_abs_delta(fixture["sampled_metrics"][:, :4], exact) <= 1e-6
    cflow = np.array([metrics[f"{c}/aupro_cflow"] for c in categories])
    assert ps.max_abs_delta(fixture["sampled_metrics"][:, 4], cflow) <= 1e-4


def test_zsad_metrics_equal_theirs(fixture, ours):
    names = list(ours["metric_names"])
    metrics = dict(zip(names, ours["metrics"], strict=True))
    mine = np.array([[metrics[f"{c}/{m}"] for m in pb.METRICS] for c in fixture["metric_objects"]])
    assert ps.max_abs_delta(fixture["official_metrics"], mine) <= 1e-6


def test_a_changed_default_fails_the_comparison(fixture, root):
    """Negative control: OpenAI's QuickGELU in place of their exact GELU moves features, maps and scores."""
    changed = _zsad(fixture, root, train=False, activation="quick_gelu")
    assert ps.max_abs_delta(fixture["maps"], changed["maps"]) > 100 * TOLERANCE
    assert ps.max_abs_delta(fixture["image_features"], changed["image_features"]) > 100 * TOLERANCE


@pytest.fixture(scope="module")
def augmented(root) -> dict[str, np.ndarray]:
    return pb.zsad_augmentations(root)


@pytest.mark.parametrize("key", ["aug_images", "aug_masks", "mosaic_image", "mosaic_mask"])
def test_augmentation_equals_their_albumentations_131_pipeline(fixture, augmented, key):
    """Their MyDataset.Trans (albumentations 1.3.1 on the BGR array of their BMP copy) and combine_img
    against zsad's pipeline (1.4.24 + datamodules/augment_compat.py) on the raw files, under the same draws:
    pixel for pixel, every transform of their pipeline applied at least once."""
    assert augmented[key].shape == fixture[key].shape
    assert ps.max_abs_delta(fixture[key], augmented[key]) == 0.0


def test_stock_albumentations_1424_transforms_fail_the_augmentation_comparison(fixture, root):
    """Negative control: 1.4.24's own Rotate, GaussNoise and ColorJitter in place of the 1.3.1 ones."""
    import albumentations as A

    from datamodules.augment_compat import qu_et_al_pipeline

    worst = 0.0
    for index, path in enumerate(pb.AUG_IMAGES):
        pipeline = qu_et_al_pipeline()
        rotate, rot90, rbc, _, oneof = pipeline.transforms
        stock = A.Compose(
            [
                A.Rotate(limit=30),
                rot90,
                rbc,
                A.GaussNoise(),
                A.OneOf([oneof.transforms[0], A.ColorJitter(), oneof.transforms[2]]),
            ]
        )
        image, _ = pb.zsad_augment_forced(index, *pb.raw_image_and_mask(root, path), pipeline=stock)
        worst = max(worst, ps.max_abs_delta(fixture["aug_images"][index], np.array(image)))
    assert worst >= 2
