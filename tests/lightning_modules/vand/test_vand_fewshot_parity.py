"""VAND's k-shot memory bank against the authors' ``test.py --mode few_shot`` (tests/fixtures/parity/
vand_fewshot.npz, written by benchmarks/parity_vand_fewshot.py from their ``test.test(args)`` run whole: their
``memory()``, per-image loop and metric loop) on the same random-weight CLIP, heads, generated image files and
reference draw: zsad alone runs here, in float32 (their CUDA autocast is not active on the CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_support as ps  # noqa: E402
import parity_vand as pv  # noqa: E402
import parity_vand_fewshot as pf  # noqa: E402


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pf.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(
        tmp_path_factory.mktemp("parity"), fixture, pv.vand_state_dict(), write=ps.few_shot_layout
    )


@pytest.fixture(scope="module")
def ours(root) -> dict[str, np.ndarray]:
    outputs = pf.zsad_outputs(root)
    return outputs | pf.sampled(outputs)


def test_the_same_files_masks_and_references(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])
    np.testing.assert_array_equal(ours["references"], fixture["references"])
    assert not set(ours["references"].ravel()) & set(ours["paths"])  # never a test image


@pytest.mark.parametrize("name", ["memory_sampled", "maps_sampled", "image_scores"])
def test_memory_maps_and_category_normalised_image_scores_match_test_py(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= ps.MAPS_ATOL, name


def test_metrics_match_test_py(fixture, ours):
    pv.assert_test_py_metrics(
        fixture["metrics"], ours["metrics"], ours["maps"], ours["masks"], ours["category_ids"]
    )


def test_negative_control_other_references_or_none_do_not_match(fixture, root):
    """The comparison can fail: draw 1's references, or none (zero-shot), move the maps far off."""
    other = pf.zsad_outputs(root, draw=1)
    assert not np.array_equal(other["references"], fixture["references"])
    assert ps.max_abs_delta(fixture["maps_sampled"], pf.sampled(other)["maps_sampled"]) > 100 * ps.MAPS_ATOL
    zero_shot = pf.zsad_outputs(root, few_shot=False)
    assert ps.max_abs_delta(fixture["maps_sampled"], zero_shot["maps"][:, ::10, ::10]) > 100 * ps.MAPS_ATOL
