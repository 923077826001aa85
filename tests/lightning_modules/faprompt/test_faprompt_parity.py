"""FAPrompt against the authors' outputs (tests/fixtures/parity/faprompt.npz, written by
benchmarks/parity_faprompt.py from their train.train() and test.test() on the same random-weight CLIP and
generated files): zsad alone runs here, one training step from their initial prompt learner in their batch
order and the evaluation with the learner their train.py saved, read from a file in their format."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_faprompt as pf  # noqa: E402
import parity_support as ps  # noqa: E402


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return ps.load_fixture(pf.FIXTURE)


@pytest.fixture(scope="module")
def root(fixture, tmp_path_factory) -> Path:
    return ps.parity_inputs(tmp_path_factory.mktemp("parity"), fixture, pf.state_dict())


@pytest.fixture(scope="module")
def their_file(fixture, tmp_path_factory) -> Path:
    """The learner their train.py saved after its step, as a file in their format."""
    learner = {k.removeprefix("trained."): v for k, v in fixture.items() if k.startswith("trained.")}
    return pf.write_learner(tmp_path_factory.mktemp("official") / "epoch_1.pth", learner)


def run_zsad(fixture, root, their_file, cfg=None, train_step: bool = True) -> dict[str, np.ndarray]:
    initial = {k.removeprefix("initial."): v for k, v in fixture.items() if k.startswith("initial.")}
    outputs = pf.zsad_outputs(root, initial, their_file, fixture["train_paths"].tolist(), cfg, train_step)
    return outputs | pf.sampled(outputs) | {"full_maps": outputs["maps"]}


@pytest.fixture(scope="module")
def ours(fixture, root, their_file) -> dict[str, np.ndarray]:
    return run_zsad(fixture, root, their_file)


def test_inputs_are_the_same_files_and_masks(fixture, ours):
    assert ours["paths"].tolist() == fixture["paths"].tolist()
    np.testing.assert_array_equal(ps.mask_sums(ours["masks"]), fixture["masks_sum"])


@pytest.mark.parametrize(
    "name", [n for n in (*pf.SHARED, *pf.OWN, *pf.FINAL) if n not in ("images", "masks")]
)
def test_features_texts_prior_maps_and_scores_match_the_authors(fixture, ours, name):
    assert ours[name].shape == fixture[name].shape, name
    assert ps.max_abs_delta(fixture[name], ours[name]) <= 1e-5, name


def test_their_prior_reads_the_first_patches(fixture, ours):
    """Their code computes the top-10 abnormal patches but feeds the meta-net the first 10 patches."""
    patches = ours["patches"]  # every 8th patch: 0 and 8 are among the first 10
    np.testing.assert_allclose(fixture["prior_patches"][:, 0], patches[:, 0], atol=1e-6)
    np.testing.assert_allclose(fixture["prior_patches"][:, 8], patches[:, 1], atol=1e-6)


def test_losses_match_the_authors(fixture, ours):
    for name in pf.LOSSES:
        assert ps.max_abs_delta(fixture[name], ours[name]) <= 1e-6 * max(1.0, abs(float(fixture[name]))), name


def test_gradients_and_the_adam_step_match_the_authors(fixture, ours):
    assert pf.grads_agree(fixture, ours)
    theirs = fixture | {f"stepped.{k}": fixture[f"trained.{k}"] for k in pf.LEARNABLE}  # the file they saved
    for name in pf.LEARNABLE:
        assert pf.steps_agree(theirs, ours, name), name


def test_metrics_match_the_authors(fixture, ours):
    """Image AUROC / AP and pixel AUROC: zsad on its maps against their metrics.py; exact AUPRO, pixel AP and
    F1-max (their test.py computes none): against zsad's evaluator on their maps; all to 1e-6. Their
    200-threshold AUPRO (cal_pro_score), whose threshold grid flips on map noise: within how far map noise
    moves it on zsad's maps (parity_support.cflow_aupro_tolerance)."""
    metrics = dict(zip(ours["metric_names"].tolist(), ours["metrics"].tolist(), strict=True))
    names = fixture["metric_names"].tolist()
    exact = [i for i, name in enumerate(names) if not name.endswith("/aupro_cflow")]
    ours_values = np.array([metrics[k] for k in names])
    assert ps.max_abs_delta(fixture["metrics"][exact], ours_values[exact]) <= 1e-6
    cflow = [names.index(f"{c}/aupro_cflow") for c in ours["categories"]]  # in category id order
    delta, tolerance = ps.cflow_aupro_agreement(
        fixture["metrics"][cflow], ours_values[cflow], ours["full_maps"], ours["masks"], ours["category_ids"]
    )
    assert (delta <= tolerance).all(), (delta, tolerance)


def test_the_cflow_aupro_equals_theirs_on_their_maps(fixture):
    """zsad's 200-threshold AUPRO on the authors' maps and masks (as the fixture keeps them: every 7th row
    and column) equals their cal_pro_score on the same arrays."""
    from lightning_modules.metrics import legacy_cflow_aupro

    classes = np.array([p.split("/")[0] for p in fixture["paths"].tolist()])
    for c in ("disc", "weave"):
        keep = classes == c
        ours = legacy_cflow_aupro(fixture["maps"][keep], fixture["masks_sampled"][keep].astype(np.float32))
        assert abs(ours - float(fixture[f"sampled_aupro_cflow.{c}"])) <= 1e-6, c


def test_the_prior_of_the_paper_does_not_match_their_code(fixture, root, their_file):
    """The comparison can fail: zsad's documented deviation (the top-10 abnormal patches) moves the prior."""
    cfg = dataclasses.replace(pf.zsad_config(), prior_selection="top_abnormal")
    outputs = run_zsad(fixture, root, their_file, cfg, train_step=False)
    assert ps.max_abs_delta(fixture["prior"], outputs["prior"]) > 1e-3
    assert ps.max_abs_delta(fixture["maps"], outputs["maps"]) > 1e-5
