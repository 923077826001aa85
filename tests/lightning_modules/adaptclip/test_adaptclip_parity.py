"""AdaptCLIP against the authors' outputs (tests/fixtures/parity/adaptclip.npz, written by
benchmarks/parity_adaptclip.py from their train.train() and test.test() with the shims its docstring lists) on
the same random-weight CLIP, initial adapters and generated image files: zsad alone runs here, float32 on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_adaptclip as pa  # noqa: E402
import parity_support as ps  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pa.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(tmp_path_factory.mktemp("parity"), fixture, pa.state_dict(), ps.few_shot_layout)


def run(fixture, root, **overrides) -> dict[str, np.ndarray]:
    cfg = pa.zsad_config(**overrides)
    outputs = pa.zsad_outputs(
        root, pa.checkpoint_of(fixture, "initial/"), pa.checkpoint_of(fixture, "trained/"), fixture, cfg
    )
    return outputs | {f"maps_{s}shot_sampled": outputs[f"maps_{s}shot"][:, ::7, ::7] for s in pa.SHOTS}


@pytest.fixture(scope="module")
def ours(fixture, root) -> dict[str, np.ndarray]:
    return run(fixture, root)


def test_inputs_are_the_same_files_masks_and_pixels(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])
    assert ps.max_abs_delta(fixture["images_sampled"], ours["images"][:, :, ::5, ::5]) <= 1e-6
    assert ours["labels"].tolist() == fixture["labels"].tolist()
    # what their code drew (zsad reads and encodes the same files): normal training images of the category
    drawn = [
        *fixture["train_prompt_files"].tolist(),
        *(f for k in pa.SHOTS if k for f in fixture[f"references_{k}shot"].tolist()),
    ]
    assert drawn and all(Path(f).parts[1:3] == ("train", "good") for f in drawn)
    assert [Path(f).parts[0] for f in fixture["references_2shot"].tolist()] == [
        "disc",
        "disc",
        "weave",
        "weave",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "static_text",
        *(f"{k}_{s}shot{t}" for s in pa.SHOTS for k, t in (("maps", "_sampled"), ("scores", ""))),
    ],
)
def test_static_texts_maps_and_scores_match_the_authors(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape, name
    assert ps.max_abs_delta(fixture[name], ours[name]) <= 1e-5, name


@pytest.mark.parametrize("shots", pa.SHOTS)
def test_metrics_match_the_authors(fixture, ours, shots):
    official = dict(
        zip(
            fixture[f"metric_names_{shots}shot"].tolist(),
            fixture[f"metrics_{shots}shot"].tolist(),
            strict=True,
        )
    )
    mine = dict(
        zip(ours[f"metric_names_{shots}shot"].tolist(), ours[f"metrics_{shots}shot"].tolist(), strict=True)
    )
    assert official and set(official) <= set(mine)
    for key, value in official.items():
        assert mine[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("shots", pa.SHOTS)
def test_aurocs_match_their_own_evaluator(fixture, ours, shots):
    """Their tools.Evaluator (anomalib's torchmetrics metrics) on their maps: image and pixel AUROC as zsad's,
    and their "P-AP", anomalib's AUPR (trapezoidal area under the PR curve, what their README calls pixel
    AUPR), as zsad's ``pixel_aupr`` (not its step-wise ``pixel_ap``; torchmetrics counts in float32)."""
    theirs = dict(
        zip(
            fixture[f"their_metric_names_{shots}shot"].tolist(),
            fixture[f"their_metrics_{shots}shot"].tolist(),
            strict=True,
        )
    )
    mine = dict(
        zip(ours[f"metric_names_{shots}shot"].tolist(), ours[f"metrics_{shots}shot"].tolist(), strict=True)
    )
    keys = [k for k in theirs if k.endswith(("/image_auroc", "/pixel_auroc"))]
    assert len(keys) == 4
    for key in keys:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    auprs = [k for k in theirs if k.endswith("/pixel_ap")]  # their Evaluator's P-AP: anomalib's AUPR
    assert len(auprs) == 2
    for key in auprs:
        assert mine[key.replace("/pixel_ap", "/pixel_aupr")] == pytest.approx(theirs[key], abs=1e-6), key
        assert abs(mine[key] - theirs[key]) > 1e-5, key  # the step-wise AP is another number


def test_one_training_step_ends_where_the_authors_step_ended(fixture, ours):
    """Every adapter parameter and BatchNorm statistic after one Adam step equals their saved epoch_1.pth:
    at least 99 % of the numbers within 1e-6, none further than one step (lr 1e-3). Adam's first step is
    ``lr * g / (|g| + 1e-8)``: where a gradient is ~0 (a dead ReLU channel before a transposed convolution, a
    bias before a BatchNorm) float noise on either side moves it by up to a step; their loader also
    shuffles the batch, so sums run in another order."""
    module = pa.zsad_module()
    official = pa.zsad_names(module, pa.checkpoint_of(fixture, "trained/"))
    mine = {k.removeprefix("stepped/"): v for k, v in ours.items() if k.startswith("stepped/")}
    assert set(official) == set(mine) == module.trainable_state_keys()
    deltas = [np.abs(t.numpy().astype(np.float64) - mine[k]).ravel() for k, t in official.items()]
    every = np.concatenate(deltas)
    assert every.max() <= 1e-3
    assert (every > 1e-6).mean() <= 0.01, (every > 1e-6).mean()


@pytest.mark.parametrize(
    ("change", "fails", "still_matches"),
    [
        # the authors' README: pq_context=False is another model (their lowered 1/2-shot numbers)
        ({"pq_context": False}, "scores_1shot", "maps_0shot_sampled"),  # zero-shot has no PQ adapter
        ({"fusion": "harmonic_mean"}, "maps_0shot_sampled", None),
    ],
)
def test_negative_control_one_changed_default_no_longer_matches(fixture, root, change, fails, still_matches):
    other = run(fixture, root, **change)
    assert ps.max_abs_delta(fixture[fails], other[fails]) > 1e-4, change
    if still_matches:
        assert ps.max_abs_delta(fixture[still_matches], other[still_matches]) <= 1e-5
