"""WinCLIP against anomalib's outputs (tests/fixtures/parity/winclip.npz, written by
benchmarks/parity_winclip.py from anomalib's own loader, pre-processor, WinClipModel and metrics) on the same
random-weight CLIP and the same generated image files: zsad alone runs here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_support as ps  # noqa: E402
import parity_winclip as pw  # noqa: E402

AGREEING_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
)  # anomalib's AUPR is trapezoidal, zsad's AP step-wise


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pw.FIXTURE)


@pytest.fixture(scope="module")
def ours(fixture, tmp_path_factory) -> dict[str, np.ndarray]:
    root = ps.parity_inputs(tmp_path_factory.mktemp("parity"), fixture, ps.parity_state_dict())
    return pw.zsad_outputs(root)


def test_inputs_are_read_in_the_same_order_with_the_same_masks(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    assert ours["categories"].tolist() == fixture["categories"].tolist()
    np.testing.assert_array_equal(ours["labels"], fixture["labels"])
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])


@pytest.mark.parametrize(
    "name", ["text", "image_embeddings", "window_scores_2", "window_scores_3", "maps_sampled", "scores"]
)
def test_features_maps_and_scores_match_anomalib(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= 1e-5, name


def test_metrics_match_anomalib(fixture, ours):
    columns = [pw.METRICS.index(m) for m in AGREEING_METRICS]
    assert ps.max_abs_delta(fixture["metrics"][:, columns], ours["metrics"][:, columns]) <= 1e-6
