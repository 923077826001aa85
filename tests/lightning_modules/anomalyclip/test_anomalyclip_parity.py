"""AnomalyCLIP against the authors' outputs (tests/fixtures/parity/anomalyclip.npz, written by
benchmarks/parity_anomalyclip.py from their Dataset, get_transform, build_model, prompt learner, DPAM,
test.py loop, train.py step and metrics) on the same random-weight CLIP, initial prompts and generated image
files: zsad alone runs here, in float32 on the CPU (their code casts only the deep prompt tokens to float16)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_anomalyclip as pa  # noqa: E402
import parity_support as ps  # noqa: E402


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pa.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(tmp_path_factory.mktemp("parity"), fixture, pa.state_dict())


@pytest.fixture(scope="module")
def ours(fixture, root) -> dict[str, np.ndarray]:
    outputs = pa.zsad_outputs(root, pa.prompt_learner_of(fixture))
    return outputs | pa.sampled(outputs)


def test_inputs_are_the_same_files_and_masks(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])


@pytest.mark.parametrize(
    "name", ["text", "image_embedding", "patches_sampled", "probs_sampled", "maps_sampled", "image_scores"]
)
def test_features_maps_and_scores_match_the_authors(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= 1e-5, name


def test_losses_match_the_authors(fixture, ours):
    for name in ("loss", "image_loss"):
        assert ps.max_abs_delta(fixture[name], ours[name]) <= 1e-6 * max(1.0, abs(float(fixture[name]))), name


def test_prompt_gradients_match_the_authors_within_one_fp16_ulp(fixture, ours):
    assert ours["grads"].shape == fixture["grads"].shape
    assert pa.gradients_agree(fixture["grads"], ours["grads"]).all()


def test_metrics_match_the_authors(fixture, ours):
    """Their sklearn metrics and zsad's evaluator on their maps (the fixture) against zsad on its own maps:
    1e-6, but for the cflow AUPRO, whose 200-step threshold grid flips on map noise (the official code's
    own reruns move it by 1.65e-5): within how far map noise moves it on these maps."""
    metrics = dict(zip(ours["metric_names"].tolist(), ours["metrics"].tolist(), strict=True))
    names = fixture["metric_names"].tolist()
    exact = [i for i, name in enumerate(names) if not name.endswith("/aupro_cflow")]
    ours_values = np.array([metrics[k] for k in names])
    assert ps.max_abs_delta(fixture["metrics"][exact], ours_values[exact]) <= 1e-6
    cflow = [names.index(f"{c}/aupro_cflow") for c in ours["categories"]]  # in category id order
    delta, tolerance = ps.cflow_aupro_agreement(
        fixture["metrics"][cflow], ours_values[cflow], ours["maps"], ours["masks"], ours["category_ids"]
    )
    assert (delta <= tolerance).all(), (delta, tolerance)


def test_without_the_fp16_deep_prompts_the_gradients_no_longer_match(fixture, root):
    """The comparison can fail: zsad's documented deviation (float32 deep tokens) is outside the tolerance."""
    cfg = dataclasses.replace(pa.zsad_config(), round_deep_prompts_fp16=False)
    outputs = pa.zsad_outputs(root, pa.prompt_learner_of(fixture), cfg)
    assert not pa.gradients_agree(fixture["grads"], outputs["grads"]).all()
