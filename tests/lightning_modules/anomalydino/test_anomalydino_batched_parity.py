"""AnomalyDINO's batched zero-shot (configs/method/anomalydino_batched.yaml, protocol.shots=0) against the
AUTHORS' code (tests/fixtures/parity/anomalydino_batched.npz, written by benchmarks/parity_anomalydino_batched.py
from dammsi/AnomalyDINO's run_anomalydino_batched.py evaluate_ad_batched) on the same random-weight tiny
DINOv2 and the same non-square generated files (2 categories x 22 test images, 154 patches each, k = 3):
zsad alone runs here, through the module's transductive pass.

Tolerances: the parity run measured max |delta| 0 for the foreground masks, patch distances, image scores and
image AUROC and 1.5e-8 for the maps (their plotting path: float32 cv2 + scipy vs zsad's float64 map cast to
float32); 1e-6 (distances, scores, maps) and 1e-6 (AUROC) leave room for another CPU's float32 rounding."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_anomalydino as pa  # noqa: E402
import parity_anomalydino_batched as pab  # noqa: E402
import parity_support as ps  # noqa: E402

from lightning_modules.anomalydino import batched  # noqa: E402

TOLERANCE = 1e-6
METRICS_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pab.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(
        tmp_path_factory.mktemp("parity"), fixture, pa.parity_state_dict(), write=pab.batched_layout
    )


@pytest.fixture(scope="module")
def ours(root) -> dict[str, np.ndarray]:
    return pab.zsad_outputs(root)


def test_the_same_files_masks_and_labels(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist() and len(ours["paths"]) == 44
    np.testing.assert_array_equal(ours["labels"], fixture["labels"])
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])
    assert ours["masks"].shape[-2:] == (100, 130)  # the files' own size


def test_foreground_masks_match_their_compute_background_mask(fixture, ours):
    np.testing.assert_array_equal(ours["foreground"], fixture["foreground"])
    disc = np.char.startswith(fixture["paths"].astype(str), "disc/")
    assert (~fixture["foreground"][disc]).any() and fixture["foreground"][~disc].all()  # disc masked only


@pytest.mark.parametrize("name", ["distances", "scores"])
def test_patch_distances_and_image_scores_match_the_authors(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape
    assert ps.max_abs_delta(fixture[name], ours[name]) <= TOLERANCE


def test_maps_match_their_plotting_path(fixture, ours):
    sampled = ours["maps"][pab.MAP_SAMPLES]
    assert sampled.shape == fixture["maps_sampled"].shape
    assert ps.max_abs_delta(fixture["maps_sampled"], sampled) <= TOLERANCE


def test_image_auroc_matches_their_roc_auc_score(fixture, ours):
    assert ps.max_abs_delta(fixture["auroc"], ours["metrics"][:, 0]) <= METRICS_TOLERANCE
    assert not np.allclose(fixture["auroc"], 1.0)  # a random-weight model: informative, not saturated


def test_the_guards_change_nothing_where_the_authors_code_is_defined(fixture, root):
    guarded = pab.zsad_outputs(root, pab.zsad_config(batched_guards=True))
    assert ps.max_abs_delta(fixture["distances"], guarded["distances"]) <= TOLERANCE


def test_negative_control_non_strict_below_the_kth_does_not_match(fixture, root, monkeypatch):
    """``<=`` instead of their strict ``<`` (= the mean of the k smallest: the rule with k + 1)."""
    k = batched.quantile_k
    monkeypatch.setattr(batched, "quantile_k", lambda q, m, g: k(q, m, g) + 1)
    other = pab.zsad_outputs(root)
    assert ps.max_abs_delta(fixture["distances"], other["distances"]) > 1000 * TOLERANCE


@pytest.mark.parametrize(
    "override",
    [
        {"batched_quantile": 0.002},  # another k
        {"mask_morphology": "grid"},  # anomalib's dilation on the patch grid
        {"masking": False},  # no background zeroed
    ],
)
def test_negative_control_another_setting_moves_the_distances(fixture, root, override):
    other = pab.zsad_outputs(root, pab.zsad_config(**override))
    assert ps.max_abs_delta(fixture["distances"], other["distances"]) > 1000 * TOLERANCE


def test_negative_control_not_excluding_the_image_itself_does_not_match(fixture, ours):
    """Their rule with each image's own patches left among the compared ones (a patch then meets itself at
    distance 0): far from their distances; the same computation excluding them reproduces the fixture."""
    import torch
    import torch.nn.functional as F

    def scored(exclude: bool) -> np.ndarray:
        out = np.zeros_like(fixture["distances"])
        for category in ours["categories"]:
            rows = np.flatnonzero(np.char.startswith(ours["paths"].astype(str), f"{category}/"))
            features = F.normalize(torch.from_numpy(ours["features"][rows]), dim=-1)
            every = features.reshape(-1, features.shape[-1])
            for position, row in enumerate(rows):
                others = every.view(len(rows), -1, every.shape[-1])
                others = torch.cat([others[:position], others[position + 1 :]]) if exclude else others
                distance = 1 - features[position] @ others.reshape(-1, every.shape[-1]).T
                kth = torch.kthvalue(distance, int(0.001 * distance.shape[1]), dim=1).values[:, None]
                below = distance < kth
                value = ((distance * below).sum(1) / below.sum(1)).numpy()
                out[row] = np.where(fixture["foreground"][row], value, 0.0)
        return out

    assert ps.max_abs_delta(fixture["distances"], scored(exclude=True)) <= TOLERANCE
    assert ps.max_abs_delta(fixture["distances"], scored(exclude=False)) > 1000 * TOLERANCE
