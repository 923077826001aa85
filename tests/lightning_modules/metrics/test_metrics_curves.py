"""The exported curves integrate to the metrics (same code path) and match independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from lightning_modules.metrics import (
    CURVE_POINTS,
    AnomalyEvaluator,
    aupro,
    category_results,
    pixel_curves,
    pixel_metrics,
    pixel_metrics_and_curves,
    pro_curve,
    ranking_curve,
    trapezoid_area,
)
from lightning_modules.metrics.curves import curve_set, thin_indices


def _step_ap(curve) -> float:
    return float(np.sum(np.diff(np.concatenate(([0.0], curve.tpr))) * curve.precision))


def test_image_curve_integrates_to_sklearn_auroc_ap_and_its_f1_threshold_attains_f1_max():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # many ties, also between the classes
    labels = (rng.random(200) < 0.3).astype(int)
    scores[labels == 1] += 0.8
    curve = ranking_curve(scores, labels)
    assert trapezoid_area(curve.roc_fpr, curve.roc_tpr, 1.0) == pytest.approx(roc_auc_score(labels, scores))
    assert _step_ap(curve) == pytest.approx(average_precision_score(labels, scores))
    assert np.all(np.diff(curve.thresholds) < 0) and curve.roc_fpr[-1] == curve.roc_tpr[-1] == 1.0
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert curve.f1_max == pytest.approx(best)
    assert f1_score(labels, scores >= curve.f1_threshold) == pytest.approx(best)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pixel_curves_integrate_to_the_pixel_metrics(dtype):
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 24, 24), dtype=np.uint8)
    masks[0, 2:8, 3:9] = 1
    masks[1, 10:20, 10:14] = 1
    masks[3, 0:3, 0:3] = 1
    maps = (rng.random(masks.shape) + 0.7 * masks).astype(dtype)
    ranking, (pro_fpr, pro), reasons = pixel_curves(list(maps), list(masks))
    assert reasons == {}
    values, _ = pixel_metrics(list(maps), list(masks), fpr_limit=0.3)
    assert trapezoid_area(ranking.roc_fpr, ranking.roc_tpr, 1.0) == pytest.approx(
        values["pixel_auroc"], abs=1e-12
    )
    assert _step_ap(ranking) == pytest.approx(values["pixel_ap"], abs=1e-12)
    assert roc_auc_score(masks.reshape(-1), maps.reshape(-1)) == pytest.approx(values["pixel_auroc"])
    assert trapezoid_area(pro_fpr, pro, 0.3) / 0.3 == pytest.approx(aupro(list(maps), list(masks)), abs=1e-12)
    reference_fpr, reference_pro = pro_curve(list(maps), list(masks))
    np.testing.assert_allclose(pro_fpr, reference_fpr.numpy())
    np.testing.assert_allclose(pro, reference_pro.numpy())
    predicted = maps.reshape(-1) >= ranking.f1_threshold
    assert f1_score(masks.reshape(-1), predicted) == pytest.approx(ranking.f1_max)


def test_pixel_curves_say_why_they_are_undefined():
    ranking, pro, reasons = pixel_curves([np.ones((4, 4), np.float32)], [np.zeros((4, 4))])
    assert ranking is None and pro is None
    assert "anomalous" in reasons["pixel"] and "regions" in reasons["pro"]


def test_evaluator_curves_agree_with_its_metrics_and_drop_padding_duplicates():
    torch.manual_seed(0)
    evaluator = AnomalyEvaluator(["a", "b"], pixel_score_dtype=torch.float32, curve_points=None)
    masks = torch.zeros(8, 16, 16)
    masks[4:, 4:10, 4:10] = 1
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    maps = torch.rand(8, 16, 16) + masks * 0.5
    scores = maps.flatten(1).amax(1)
    categories = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    evaluator.update(categories, torch.arange(8), scores, labels, maps, masks)
    evaluator.update(
        categories[:2], torch.arange(2), scores[:2] + 9, labels[:2], maps[:2], masks[:2]
    )  # padding
    results = evaluator.compute()
    curves = evaluator.curves()
    for name in ("a", "b"):
        metrics, curve_set = results.per_category[name], curves[name]
        image = curve_set.image
        assert trapezoid_area(image.roc_fpr, image.roc_tpr, 1.0) == pytest.approx(metrics["image_auroc"])
        assert image.f1_max == pytest.approx(metrics["image_f1_max"])
        pixel = curve_set.pixel
        assert trapezoid_area(pixel.roc_fpr, pixel.roc_tpr, 1.0) == pytest.approx(metrics["pixel_auroc"])
        assert trapezoid_area(curve_set.pro_fpr, curve_set.pro, 0.3) / 0.3 == pytest.approx(metrics["aupro"])
        assert image.thresholds.max() < 9  # the duplicate's shifted score was dropped


def test_thin_keeps_endpoints_and_the_requested_point():
    x = np.linspace(0, 1, 10_000)
    kept = thin_indices(x, x**2, keep=1234, limit=100)
    assert len(kept) <= 103 and {0, 1234, 9_999} <= set(kept.tolist())
    assert np.all(np.diff(kept) > 0)
    assert thin_indices(x[:50], x[:50], limit=100).tolist() == list(range(50))


@pytest.mark.parametrize("scores", ["distinct", "tied", "one region below"])
@pytest.mark.parametrize("points", [3, 10, 257])
def test_the_thinned_pro_curve_is_the_whole_curve_thinned(scores, points):
    """pixel_metrics_and_curves(pro_points=N) finds the PRO points without the whole curve: exactly those
    thin_indices keeps of the whole curve, with scores tied across the classes, and for a curve that ends
    below PRO 1 and closes at (1, 1)."""
    generator = torch.Generator().manual_seed(5)
    masks = torch.zeros(4, 24, 24)
    masks[1, 3:9, 4:12] = masks[2, 10:20, 2:5] = masks[3, 0:2, :] = 1
    maps = torch.rand(4, 24, 24, generator=generator) + 0.3 * masks
    if scores == "tied":
        maps = (maps * 16).round() / 16
    elif scores == "one region below":
        maps[3, 0:2, :] -= 2.0
    ranking, (x, y), _ = pixel_curves(list(maps), list(masks))
    kept = thin_indices(x, y, limit=points)
    values, _, (thin_ranking, (thin_x, thin_y), _) = pixel_metrics_and_curves(
        list(maps), list(masks), pro_points=points
    )
    assert x.shape[0] > points or scores == "tied"
    assert np.array_equal(thin_x, x[kept]) and np.array_equal(thin_y, y[kept])
    assert (thin_y[-1] == 1.0) and (y[-2] < 1.0) == (scores == "one region below")
    assert np.array_equal(thin_ranking.f1, ranking.f1) and values == pixel_metrics(list(maps), list(masks))[0]


def test_thin_measures_length_as_dx_plus_dy():
    """Points are spread evenly by |dx| + |dy|: along a monotone curve that is (x - x0) + (y - y0) at each
    point (how the PRO points are found without the curve), otherwise the running sum."""
    x = np.linspace(0.0, 1.0, 1001)
    along = x + x**3  # monotone: the length at each point
    assert (
        thin_indices(x, x**3, limit=5).tolist() == np.searchsorted(along, [0.0, 2 / 3, 4 / 3, 2.0]).tolist()
    )
    assert thin_indices(x, x**3, limit=5).tolist() == [0, 524, 808, 1000]
    wave = np.sin(8 * x)  # goes back in y: the length is summed
    length = np.concatenate(([0.0], np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(wave)))))
    want = np.searchsorted(length, np.linspace(0.0, length[-1], 4))
    assert thin_indices(x, wave, limit=5).tolist() == want.tolist()


def test_kept_curves_are_thinned_and_keep_the_f1_thresholds():
    """A finished category keeps thinned curves (an exact pixel curve is larger than the pixels): at most
    about CURVE_POINTS points, the same F1-optimal thresholds and F1-max, every kept point a point of the
    full curve, and the full curves' metrics unchanged."""
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(6, 40, 40, generator=generator)
    masks = torch.zeros(6, 40, 40)
    masks[3:, 10:25, 12:30] = 1
    maps = maps + 0.4 * masks
    scores, labels = maps.flatten(1).amax(1), torch.tensor([0, 0, 0, 1, 1, 1])
    limit = 50
    thinned, full = (
        AnomalyEvaluator(["c"], samples_per_category=[6], curve_points=points) for points in (limit, None)
    )
    for evaluator in (thinned, full):
        evaluator.update(torch.zeros(6, dtype=torch.long), torch.arange(6), scores, labels, maps, masks)
    assert thinned.compute().per_category == full.compute().per_category
    small, exact = thinned.curves()["c"], full.curves()["c"]
    assert exact.pixel.thresholds.shape[0] > 10 * limit  # the full curve really is long
    reference = curve_set(scores, labels, list(maps), list(masks))
    assert np.array_equal(exact.pro, reference.pro)
    for got, want in ((small.pixel, exact.pixel), (small.image, exact.image)):
        assert got.thresholds.shape[0] <= limit + 2 and got.roc_fpr.shape[0] <= limit + 2
        assert got.f1_threshold == want.f1_threshold and got.f1_max == want.f1_max
        assert set(got.thresholds.tolist()) <= set(want.thresholds.tolist())
        assert got.roc_fpr[0] == want.roc_fpr[0] and got.roc_tpr[-1] == want.roc_tpr[-1]
    kept = thin_indices(exact.pro_fpr, exact.pro, limit=limit)
    assert np.array_equal(small.pro_fpr, exact.pro_fpr[kept]) and np.array_equal(small.pro, exact.pro[kept])
    assert small.pro[-1] == 1.0 and small.pro_fpr[-1] == 1.0
    assert AnomalyEvaluator(["c"]).curve_points == CURVE_POINTS
    with pytest.raises(ValueError, match="curve_points"):
        AnomalyEvaluator(["c"], curve_points=2)


def _same_curves(got, want) -> bool:
    """Exactly equal pixel curves: (ranking, pro, reasons) of :func:`pixel_curves`."""
    (ranking, pro, reasons), (want_ranking, want_pro, want_reasons) = got, want
    if (
        reasons != want_reasons
        or (ranking is None) != (want_ranking is None)
        or (pro is None) != (want_pro is None)
    ):
        return False
    same_ranking = ranking is None or all(
        np.array_equal(getattr(ranking, f), getattr(want_ranking, f)) for f in vars(ranking)
    )
    return same_ranking and (
        pro is None or all(np.array_equal(a, b) for a, b in zip(pro, want_pro, strict=True))
    )


def _tied_maps(seed: int, masks: np.ndarray) -> np.ndarray:
    """Scores on a coarse grid (ties within and between the classes), anomalous pixels raised."""
    rng = np.random.default_rng(seed)
    return np.round(rng.random(masks.shape) + 0.6 * masks * rng.random(masks.shape), 2)


def _masks(kind: str) -> np.ndarray:
    masks = np.zeros((5, 20, 24), dtype=np.uint8)
    if kind == "regions":
        masks[0, 2:8, 3:9] = 1
        masks[1, 10:20, 10:14] = 1
        masks[1, 0, 0] = 1  # a one-pixel region
        masks[4, 5:7, 5:20] = 1
    elif kind == "all anomalous":
        masks[:] = 1
    return masks


@pytest.mark.parametrize("kind", ["regions", "no anomalous pixels", "all anomalous"])
@pytest.mark.parametrize(
    "as_input",
    [
        lambda m: m.astype(np.float32),
        lambda m: m.astype(np.float64),
        lambda m: m.astype(np.float16),
        lambda m: torch.from_numpy(m.astype(np.float32)),
        lambda m: torch.from_numpy(m.astype(np.float32)).bfloat16(),
    ],
    ids=["float32", "float64", "float16", "torch-float32", "torch-bfloat16"],
)
@pytest.mark.parametrize("fpr_limit", [0.3, 1.0, 0.004])
def test_metrics_and_curves_from_one_split_equal_the_separate_calls(kind, as_input, fpr_limit):
    masks = _masks(kind)
    maps = as_input(_tied_maps(7, masks))
    map_list, mask_list = list(maps), list(masks)
    values, reasons, curves = pixel_metrics_and_curves(map_list, mask_list, fpr_limit)
    want_values, want_reasons = pixel_metrics(map_list, mask_list, fpr_limit)
    assert values == want_values and reasons == want_reasons  # == on floats: bit for bit
    assert _same_curves(curves, pixel_curves(map_list, mask_list))
    if kind != "regions":
        assert set(curves[2]) == {"pixel", "pro"} and set(reasons) == set(want_values)


@pytest.mark.parametrize(
    "maps",
    [
        np.ones((5, 20, 24), np.float32),  # all scores equal: the cflow thresholds are undefined
        np.where(_masks("regions"), np.inf, _tied_maps(3, _masks("regions"))).astype(np.float32),
        np.where(_masks("regions"), 0.0, 1.0 + _tied_maps(4, _masks("regions"))).astype(
            np.float32
        ),  # below all
    ],
    ids=["constant", "infinite", "anomalous-lowest"],
)
def test_metrics_and_curves_from_one_split_in_degenerate_cases(maps):
    masks = list(_masks("regions"))
    values, reasons, curves = pixel_metrics_and_curves(list(maps), masks)
    assert (values, reasons) == pixel_metrics(list(maps), masks)
    assert _same_curves(curves, pixel_curves(list(maps), masks))
    assert reasons or all(v is not None for v in values.values())


def test_metrics_and_curves_from_one_split_reject_nan_like_the_separate_calls():
    maps = _tied_maps(5, _masks("regions")).astype(np.float32)
    maps[2, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics_and_curves(list(maps), list(_masks("regions")))


def test_evaluator_computes_a_category_once_per_update(monkeypatch):
    """compute() and curves() share one pixel_metrics_and_curves call per category until the next
    update, which makes them recompute (the new samples count)."""
    calls = []
    real = category_results.pixel_metrics_and_curves
    monkeypatch.setattr(
        category_results, "pixel_metrics_and_curves", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    masks = torch.from_numpy(_masks("regions"))
    maps = torch.from_numpy(_tied_maps(9, masks.numpy())).float()
    labels = (masks.flatten(1).amax(1) > 0).long()
    evaluator = AnomalyEvaluator(["c"], curve_points=None)
    evaluator.update(
        torch.zeros(4, dtype=torch.long),
        torch.arange(4),
        maps[:4].amax((1, 2)),
        labels[:4],
        maps[:4],
        masks[:4],
    )
    first = evaluator.compute().per_category["c"]
    first_curves = evaluator.curves()["c"]
    assert len(calls) == 1
    assert first_curves.pro_fpr.shape == pixel_curves(list(maps[:4]), list(masks[:4]))[1][0].shape
    evaluator.update(
        torch.zeros(1, dtype=torch.long),
        torch.tensor([4]),
        maps[4:].amax((1, 2)),
        labels[4:],
        maps[4:],
        masks[4:],
    )
    curves = evaluator.curves()["c"]
    results = evaluator.compute().per_category["c"]
    assert len(calls) == 2
    want_values, _ = pixel_metrics(list(maps), list(masks))
    assert {m: results[m] for m in want_values} == want_values != {m: first[m] for m in want_values}
    assert _same_curves(
        (curves.pixel, (curves.pro_fpr, curves.pro), {}), pixel_curves(list(maps), list(masks))
    )
    no_curves = AnomalyEvaluator(["c"], keep_curves=False)
    no_curves.update(
        torch.zeros(5, dtype=torch.long), torch.arange(5), maps.amax((1, 2)), labels, maps, masks
    )
    assert no_curves.compute().per_category["c"] == results and len(calls) == 2
    with pytest.raises(ValueError, match="keep_curves"):
        no_curves.curves()
