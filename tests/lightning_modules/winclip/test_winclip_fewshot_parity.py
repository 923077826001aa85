"""WinCLIP+ (few-shot) against anomalib's WinClipModel with reference images (tests/fixtures/parity/
winclip_fewshot.npz, written by benchmarks/parity_winclip_fewshot.py from anomalib's read_image, pre-processor,
``WinClipModel.setup(category, references)``, forward and metrics) on the same random-weight CLIP, the same
generated image files and the same reference draw: zsad alone runs here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_support as ps  # noqa: E402
import parity_winclip as pw  # noqa: E402
import parity_winclip_fewshot as pf  # noqa: E402

# anomalib's AUPR is trapezoidal, zsad's AP step-wise
AGREEING_METRICS = ("image_auroc", "pixel_auroc", "aupro")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pf.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(
        tmp_path_factory.mktemp("parity"), fixture, ps.parity_state_dict(), write=ps.few_shot_layout
    )


@pytest.fixture(scope="module")
def ours(root) -> dict[str, np.ndarray]:
    return pf.zsad_outputs(root)


def test_the_protocol_draws_the_fixtures_references_from_the_training_images(fixture, ours):
    np.testing.assert_array_equal(ours["references"], fixture["references"])
    assert all("/train/good/" in f for f in ours["references"].ravel())
    assert not set(ours["references"].ravel()) & set(ours["paths"])  # never a test image
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ours["labels"], fixture["labels"])


@pytest.mark.parametrize(
    "name",
    [
        "reference_images_sampled",
        "patch_memory_sampled",
        "window_memory_2_sampled",
        "window_memory_3_sampled",
        "few_shot",
        "maps_sampled",
        "scores",
    ],
)
def test_memory_few_shot_scores_maps_and_image_scores_match_anomalib(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= TOLERANCE, name


def test_metrics_match_anomalib(fixture, ours):
    columns = [pw.METRICS.index(m) for m in AGREEING_METRICS]
    assert ps.max_abs_delta(fixture["metrics"][:, columns], ours["metrics"][:, columns]) <= 1e-6


def test_negative_control_another_draws_references_do_not_match(fixture, ours, root):
    """The comparison can fail: draw 1's references (other files) move the few-shot maps far beyond the
    tolerance, and without references (zero-shot) the maps differ too."""
    other = pf.zsad_outputs(root, draw=1)
    assert not np.array_equal(other["references"], fixture["references"])
    assert ps.max_abs_delta(fixture["few_shot"], other["few_shot"]) > 100 * TOLERANCE
    zero_shot = pw.zsad_outputs(root)
    assert ps.max_abs_delta(fixture["maps_sampled"], zero_shot["maps_sampled"]) > 100 * TOLERANCE
