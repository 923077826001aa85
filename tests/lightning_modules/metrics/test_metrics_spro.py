"""sPRO (MVTec LOCO AD): zsad against MVTec's LOCO evaluation code (fixture of benchmarks/parity_loco_spro.py),
a hand-checked curve, and the evaluator's streaming states against the functional form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.regions import DefectRule
from lightning_modules.metrics import AnomalyEvaluator
from lightning_modules.metrics._arrays import UndefinedMetricError
from lightning_modules.metrics.spro import region_weights, spro, spro_from_parts

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "loco_spro.npz"


def _fixture_inputs() -> tuple[dict, list, list, list]:
    data = dict(np.load(FIXTURE))
    rules = {
        d["pixel_value"]: DefectRule(
            d["defect_name"], d["pixel_value"], d["saturation_threshold"], d["relative_saturation"]
        )
        for d in json.loads(str(data["defects"]))
    }
    masks, areas = [], []
    for regions, values in zip(data["regions"], data["values"], strict=True):
        masks.append([m for m, v in zip(regions, values, strict=True) if v])
        areas.append(
            [rules[int(v)].saturation_area(int(m.sum())) for m, v in zip(regions, values, strict=True) if v]
        )
    return data, list(data["maps"]), masks, areas


def test_equals_mvtec_loco_code_with_every_score_a_threshold() -> None:
    """MVTec's functions (get_spros_of_defects_of_images, get_fp_tn_areas_per_image, get_auc_for_max_fpr)
    with every distinct score as a threshold, at each integration limit of its evaluation script; ties,
    overlapping regions, relative and absolute rules (one larger than its region) included."""
    data, maps, masks, areas = _fixture_inputs()
    assert sum(len(m) for m in masks) >= 8 and any(len(m) > 1 for m in masks)
    for limit, expected in zip(data["max_fprs"], data["exact_auc"], strict=True):
        assert spro(maps, masks, areas, fpr_limit=float(limit)) == pytest.approx(float(expected), abs=1e-12)
    # MVTec's adaptive thresholds approach the exact curve (its default curve_max_distance of 0.01)
    assert np.abs(data["adaptive_auc"] - data["exact_auc"]).max() < 2e-3


def test_weights_saturate_at_the_saturation_area() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert region_weights(scores, 2.0).tolist() == [0.0, 0.5, 0.0, 0.5]  # the two best pixels saturate it
    assert region_weights(scores, 2.5).tolist() == [0.0, 0.4, 0.2, 0.4]  # the third adds the last half pixel
    assert region_weights(scores, 0.0).tolist() == [0.0, 1.0, 0.0, 0.0]  # found with its first pixel


def test_hand_computed_curve() -> None:
    """Two anomaly-free pixels (0.2, 0.6) and one region of pixels (0.9, 0.4) saturating at 1 pixel: at
    FPR 0 the region is saturated by its 0.9 pixel, so sPRO is 1 over the whole FPR range."""
    assert spro_from_parts(np.array([0.2, 0.6]), [(np.array([0.9, 0.4]), 1.0)], 1.0) == pytest.approx(1.0)
    # saturating at 2 pixels: sPRO 0.5 over FPR [0, 0.5] (until the 0.6 normal pixel), then the 0.4 pixel
    # completes it: 0.5 * 0.5 + 1.0 * 0.5
    got = spro_from_parts(np.array([0.2, 0.6]), [(np.array([0.9, 0.4]), 2.0)], 1.0)
    assert got == pytest.approx(0.75)
    with pytest.raises(UndefinedMetricError, match="no anomalous regions"):
        spro_from_parts(np.array([0.1]), [], 0.05)
    with pytest.raises(UndefinedMetricError, match="no anomaly-free pixels"):
        spro_from_parts(np.zeros(0), [(np.array([0.3]), 1.0)], 0.05)


def test_evaluator_streams_regions_as_the_functional_form() -> None:
    """Regions fed batch by batch (one padded to 3 slots, with empty padding) give the functional AU-sPRO;
    a category without regions says why."""
    data, maps, masks, areas = _fixture_inputs()
    n = len(maps)
    regions = torch.zeros(n, 3, *maps[0].shape, dtype=torch.bool)
    saturation = torch.zeros(n, 3, dtype=torch.float64)
    for i, (ms, aa) in enumerate(zip(masks, areas, strict=True)):
        for k, (m, a) in enumerate(zip(ms, aa, strict=True)):
            regions[i, k] = torch.from_numpy(m)
            saturation[i, k] = a
    union = regions.any(1)
    labels = union.flatten(1).any(1).long()
    ev = AnomalyEvaluator(
        ["loco", "plain"], region_metrics=True, spro_fpr_limit=0.05, samples_per_category=[n, 2]
    )
    tensors = torch.from_numpy(np.stack(maps))
    for start in range(0, n, 4):
        sl = slice(start, start + 4)
        b = tensors[sl].shape[0]
        ev.update(
            torch.zeros(b, dtype=torch.long), torch.arange(start, start + b), tensors[sl].amax((1, 2)), labels[sl],
            tensors[sl], union[sl], regions=regions[sl], region_saturation=saturation[sl],
        )  # fmt: skip
    ev.update(torch.ones(2, dtype=torch.long), torch.tensor([n, n + 1]), torch.rand(2), torch.tensor([0, 1]),
              torch.rand(2, 4, 4), torch.tensor([[[0] * 4] * 4, [[1] * 4] * 4]))  # fmt: skip
    result = ev.compute()
    assert result.per_category["loco"]["spro"] == pytest.approx(float(data["exact_auc"][1]), abs=1e-12)
    assert result.per_category["plain"]["spro"] is None
    assert "no ground-truth regions" in result.missing["plain"]["spro"]
    assert result.extra_metrics == ["spro"] and "spro" in result.to_dict()["metrics"]
    assert result.mean["spro"] == result.per_category["loco"]["spro"] and result.mean_counts["spro"] == 1
