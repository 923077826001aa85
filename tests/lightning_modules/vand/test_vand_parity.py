"""VAND against the authors' APRIL-GAN outputs (tests/fixtures/parity/vand.npz, written by
benchmarks/parity_vand.py from their MVTecDataset, transforms, prompt ensemble, vendored CLIP, LinearLayer and
losses) on the same random-weight CLIP, heads and generated image files: zsad alone runs here, one training
step in float32 (the authors' CUDA autocast is not active on the CPU, theirs or zsad's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_support as ps  # noqa: E402
import parity_vand as pv  # noqa: E402


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pv.FIXTURE)


@pytest.fixture(scope="module")
def ours(fixture, tmp_path_factory) -> dict[str, np.ndarray]:
    root = ps.parity_inputs(tmp_path_factory.mktemp("parity"), fixture, pv.vand_state_dict())
    outputs = pv.zsad_outputs(root)
    return outputs | pv.sampled(outputs)


def test_inputs_are_the_same_files_and_masks(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])


@pytest.mark.parametrize(
    "name", ["text", "image_embedding", "tokens_sampled", "maps_sampled", "image_scores", "loss", "grads"]
)
def test_features_maps_scores_loss_and_gradient_match_the_authors(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= 1e-5, name


def test_metrics_match_test_py(fixture, ours):
    """Pixel/image AUROC and AP (sklearn in test.py) and the cflow AUPRO (test.py's cal_pro_score on 2-D masks)."""
    assert ours["metrics"].shape == fixture["metrics"].shape == (2, len(pv.METRICS))
    assert ps.max_abs_delta(fixture["metrics"], ours["metrics"]) <= 1e-6
