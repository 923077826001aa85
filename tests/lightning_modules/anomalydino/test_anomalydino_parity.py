"""AnomalyDINO against anomalib's AnomalyDINOModel (tests/fixtures/parity/anomalydino.npz, written by
benchmarks/parity_anomalydino.py from anomalib's read_image, pre-processor, memory bank, forward and metrics)
on the same random-weight tiny DINOv2, the same generated image files and the same reference draw: zsad
alone runs here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_anomalydino as pa  # noqa: E402
import parity_support as ps  # noqa: E402

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pa.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(
        tmp_path_factory.mktemp("parity"), fixture, pa.parity_state_dict(), write=ps.few_shot_layout
    )


@pytest.fixture(scope="module")
def ours(root) -> dict[str, np.ndarray]:
    return pa.zsad_outputs(root)


def test_the_protocol_draws_the_fixtures_references_and_reads_the_same_files(fixture, ours):
    np.testing.assert_array_equal(ours["references"], fixture["references"])
    assert not set(ours["references"].ravel()) & set(ours["paths"])  # never a test image
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ours["labels"], fixture["labels"])
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])


@pytest.mark.parametrize(
    "name",
    ["reference_images_sampled", "images_sampled", "memory_sampled", "distances", "maps_sampled", "scores"],
)
def test_inputs_memory_distances_maps_and_image_scores_match_anomalib(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= TOLERANCE, name


def test_metrics_match_anomalib(fixture, ours):
    assert ps.max_abs_delta(fixture["metrics"], ours["metrics"]) <= 1e-6


def test_foreground_masking_matches_anomalib(fixture, ours, root):
    """With ``masking=True`` (every category): the same foreground patches in the memory, distances (0 on
    the background), maps, scores and metrics; without masking the masked outputs are far off."""
    masked = pa.zsad_outputs(root, pa.zsad_config(masking=True))
    np.testing.assert_array_equal(masked["memory_size"], fixture["masked_memory_size"])
    assert (fixture["masked_memory_size"] < ours["memory_size"]).all()  # background left the memory
    for name in ("distances", "scores", "maps_sampled"):
        assert ps.max_abs_delta(fixture[f"masked_{name}"], masked[name]) <= TOLERANCE, name
    assert ps.max_abs_delta(fixture["masked_metrics"], masked["metrics"]) <= 1e-6
    assert ps.max_abs_delta(fixture["masked_distances"], ours["distances"]) > 100 * TOLERANCE


def test_negative_control_timms_antialiased_position_embedding_does_not_match(fixture, root):
    """The comparison can fail: resampling the position embedding with antialiasing (timm's default, which
    anomalib switches off) moves the patch distances far beyond the tolerance."""
    other_cfg = pa.zsad_config(gaussian_sigma=0.0)  # the distances only: no need to smooth maps
    other_cfg.backbone.pos_embed_antialias = True
    other = pa.zsad_outputs(root, other_cfg)
    assert ps.max_abs_delta(fixture["distances"], other["distances"]) > 100 * TOLERANCE
