"""AnomalyDINO's authors' setting (configs/method/anomalydino_authors.yaml) against the AUTHORS' code
(tests/fixtures/parity/anomalydino_authors.npz, written by benchmarks/parity_anomalydino_authors.py from
dammsi/AnomalyDINO's run_anomaly_detection and post_eval) on the same random-weight tiny DINOv2, the same
non-square generated image files and the same references: zsad alone runs here.

Tolerances: the parity run measured max |delta| <= 4e-7 for memory, patch distances, image scores and maps
and <= 3.1e-7 for the metrics (float32 torch vs their float32 faiss search and float64 maps); 1e-5 and 1e-6
leave room for another CPU's float32 rounding (AVX2 vs AVX-512, as the other parity tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_anomalydino as pa  # noqa: E402
import parity_anomalydino_authors as paa  # noqa: E402
import parity_support as ps  # noqa: E402

TOLERANCE = 1e-5
METRICS_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(paa.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(
        tmp_path_factory.mktemp("parity"), fixture, pa.parity_state_dict(), write=paa.authors_layout
    )


@pytest.fixture(scope="module")
def ours(root) -> dict[str, dict[str, np.ndarray]]:
    return {run: paa.zsad_outputs(root, run=run) for run in paa.RUNS}


def sampled(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps of zsad's large arrays (their references: top-left cropped)."""
    images = out["reference_images"]
    images = images.reshape(-1, *images.shape[-3:])[..., :112, :140]
    return {
        "maps_sampled": out["maps"][paa.MAP_SAMPLES],
        "memory_sampled": out["memory"][::5],
        "reference_images_sampled": images[..., ::8, ::8],
    }


def test_sorted_references_and_the_same_files_masks_and_labels(fixture, ours):
    out = ours["full"]
    np.testing.assert_array_equal(out["references"], fixture["references"])  # their seed 0: files 000, 001
    assert out["references"].tolist() == [
        [f"{c}/train/good/00{i}.png" for i in (0, 1)] for c in ps.CATEGORIES
    ]
    assert out["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(out["labels"], fixture["labels"])
    np.testing.assert_array_equal(ps.mask_sums(out["masks"]), fixture["masks_sum"])
    assert out["masks"].shape[-2:] == (100, 130)  # the files' own size, as their post_eval


@pytest.mark.parametrize("run", list(paa.RUNS))
@pytest.mark.parametrize(
    "name", ["reference_images_sampled", "memory_sampled", "distances", "scores", "maps_sampled"]
)
def test_references_memory_distances_scores_and_maps_match_the_authors(fixture, ours, run, name):
    out = ours[run] | sampled(ours[run])
    assert out[name].shape == fixture[f"{run}_{name}"].shape
    assert ps.max_abs_delta(fixture[f"{run}_{name}"], out[name]) <= TOLERANCE, name
    np.testing.assert_array_equal(out["memory_size"], fixture[f"{run}_memory_size"])


@pytest.mark.parametrize("run", list(paa.RUNS))
def test_metrics_match_the_authors_post_eval(fixture, ours, run):
    """Image AUROC, AP, F1-max, pixel AUROC and AU-PRO (FPR 0.3) of zsad's evaluator on zsad's maps vs
    their post_eval on theirs (zsad has no pixel F1-max)."""
    official = fixture[f"{run}_metrics"][:, paa.SHARED]
    assert ps.max_abs_delta(official, ours[run]["metrics"]) <= METRICS_TOLERANCE


def test_the_full_run_masks_and_rotates(fixture):
    assert (fixture["full_memory_size"] == 8 * fixture["plain_memory_size"]).all()  # 8 rotations, unmasked
    assert (fixture["full_distances"] == 0).any()  # masked background patches of test images


@pytest.mark.parametrize(
    "override",
    [
        {"mask_morphology": "grid"},  # anomalib's dilation on the patch grid
        {"backbone.crop": "centre"},  # anomalib's crop
        {"mask_references": True},  # anomalib masks the references
    ],
)
def test_negative_control_an_anomalib_choice_moves_the_distances(fixture, root, override):
    other = paa.zsad_outputs(root, paa.run_config("full", **override))
    assert ps.max_abs_delta(fixture["full_distances"], other["distances"]) > 100 * TOLERANCE


@pytest.mark.parametrize("override", [{"gaussian": "anomalib"}, {"map_resize": "anomalib"}])
def test_negative_control_anomalibs_map_does_not_match(fixture, root, override):
    """The same distances, other maps: anomalib's blur (torch 'reflect' padding, the edge sample not
    repeated) moves the sampled maps by 6e-4 near the borders, its nearest upsampling far more."""
    other = paa.zsad_outputs(root, paa.run_config("plain", **override))
    assert ps.max_abs_delta(fixture["plain_distances"], other["distances"]) <= TOLERANCE
    assert ps.max_abs_delta(fixture["plain_maps_sampled"], other["maps"][paa.MAP_SAMPLES]) > 20 * TOLERANCE


def test_negative_control_anomalibs_defaults_do_not_match(fixture, root):
    """anomalib's whole setting (252 x 252 px, centre crop, no rotation) on the same files and references."""
    other = paa.zsad_outputs(root, pa.zsad_config())
    assert ps.max_abs_delta(fixture["plain_scores"], other["scores"]) > 100 * TOLERANCE
