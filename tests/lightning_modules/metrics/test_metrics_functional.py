"""The functional metrics against independent computations: sklearn, and a brute-force PRO written here
that loops over every threshold and every region (tiny inputs only)."""

from __future__ import annotations

from bisect import bisect

import numpy as np
import pytest
import torch
from aupr_reference import anomalib_aupr
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from lightning_modules.metrics import (
    UndefinedMetricError,
    _arrays,
    _histogram,
    _split,
    aupro,
    binary_aupr,
    binary_auroc,
    binary_average_precision,
    f1_max,
    legacy_cflow_aupro,
    pixel_metrics,
    pro_curve,
    trapezoid_area,
)

# --------------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------------


def mvtec_trapezoid(x, y, x_max):
    """The MVTec AD evaluation code's trapezoid with interpolation at x_max (ported as is)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        assert 0 < ins < len(x)
        y_interp = y[ins - 1] + ((y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1]))
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    mask = x <= x_max
    x, y = x[mask], y[mask]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def brute_force_curve(maps, masks):
    """PRO(t), FPR(t) at every threshold t in {distinct scores} + {-inf}, descending, by explicit loops."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    masks = [np.asarray(g) > 0 for g in masks]
    regions = []
    for i, g in enumerate(masks):
        labels, n = ndimage.label(g, structure=np.ones((3, 3)))
        regions += [(i, labels == r) for r in range(1, n + 1)]
    n_ok = sum(int((~g).sum()) for g in masks)
    thresholds = sorted({float(v) for m in maps for v in m.ravel()}, reverse=True) + [-np.inf]
    xs, ys = [], []
    for t in thresholds:
        fp = sum(int(((m > t) & ~g).sum()) for m, g in zip(maps, masks, strict=True))
        pros = []
        for i, region in regions:
            pros.append(float((maps[i][region] > t).sum()) / float(region.sum()))
        xs.append(fp / n_ok)
        ys.append(float(np.mean(pros)))
    return xs, ys


def brute_force_aupro(maps, masks, fpr_limit):
    xs, ys = brute_force_curve(maps, masks)
    return mvtec_trapezoid(xs, ys, fpr_limit) / fpr_limit


def anomalyclip_pro(masks, amaps, max_step=200, expect_fpr=0.3):
    """AnomalyCLIP's cal_pro_score (cflow-style), ported with scipy labelling instead of skimage."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks, strict=True):
            labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
            for r in range(1, n + 1):
                region = labels == r
                pro.append(binary_amap[region].sum() / region.sum())
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        fprs.append(fp_pixels / inverse_masks.sum())
        pros.append(np.array(pro).mean())
    pros, fprs = np.array(pros), np.array(fprs)
    idxes = fprs < expect_fpr
    fprs = fprs[idxes]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[idxes])


def test_aupr_is_anomalibs_trapezoid_not_the_step_wise_ap():
    from torchmetrics.classification import BinaryPrecisionRecallCurve
    from torchmetrics.utilities.compute import auc as torchmetrics_auc

    rng = np.random.default_rng(3)
    apart = 0.0
    for trial in range(200):
        n = int(rng.integers(2, 300))
        s = rng.random(n) if trial % 3 == 0 else rng.integers(0, int(rng.integers(2, 30)), n) / 30.0  # ties
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        assert binary_aupr(s, y) == pytest.approx(anomalib_aupr(s, y), abs=1e-12)
        apart = max(apart, abs(binary_aupr(s, y) - binary_average_precision(s, y)))
    assert apart > 1e-2  # another number than AP
    s, y = rng.random(500).astype(np.float32), rng.integers(0, 2, 500)
    precision, recall, _ = BinaryPrecisionRecallCurve()(torch.from_numpy(s), torch.from_numpy(y))
    reference = float(torchmetrics_auc(recall, precision, reorder=True))  # anomalib's AUPR.compute itself
    assert binary_aupr(s, y) == pytest.approx(reference, abs=1e-6)  # torchmetrics counts in float32


def random_case(rng, n_levels=None, n_images=None):
    n = n_images or int(rng.integers(1, 4))
    h, w = (int(v) for v in rng.integers(2, 8, 2))
    if n_levels:
        maps = rng.integers(0, n_levels, (n, h, w)).astype(np.float32)
    else:
        maps = rng.normal(size=(n, h, w)).astype(np.float32)
    masks = rng.random((n, h, w)) < 0.25
    maps[masks] += np.float32(rng.uniform(0, 2))
    return maps, masks


# --------------------------------------------------------------------------------------------------------
# Image-level metrics vs sklearn
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "ties", "constant", "wide_range", "one_positive"])
def test_ranking_metrics_match_sklearn(kind):
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        if kind == "continuous":
            s = rng.normal(size=n)
        elif kind == "ties":
            s = rng.integers(0, 3, n).astype(np.float64)
        elif kind == "constant":
            s = np.full(n, 0.7)
        elif kind == "wide_range":  # not probabilities: no sigmoid may squash these into ties
            s = rng.normal(size=n) * 1e6 + 50.0
        else:
            y[:] = 0
            y[int(rng.integers(0, n))] = 1
            s = rng.normal(size=n)
        assert binary_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert binary_average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        p, r, _ = precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * p * r / (p + r))
        assert f1_max(s, y) == pytest.approx(f1.max(), abs=1e-12)


def test_ranking_metrics_accept_torch_and_float16():
    rng = np.random.default_rng(2)
    s = rng.random(500).astype(np.float16)
    y = rng.integers(0, 2, 500)
    expected = roc_auc_score(y, s.astype(np.float64))
    assert binary_auroc(torch.from_numpy(s), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-12)
    assert binary_auroc(s, y.astype(bool)) == pytest.approx(expected, abs=1e-12)


def test_ranking_metrics_known_answers():
    assert binary_auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert binary_auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert binary_auroc([1.0, 1.0], [0, 1]) == 0.5
    assert binary_average_precision([0.1, 0.9, 0.5], [0, 1, 0]) == 1.0
    assert binary_average_precision([5.0, 5.0, 5.0, 5.0], [0, 1, 0, 0]) == 0.25
    assert f1_max([0.9, 0.8, 0.1], [1, 0, 1]) == pytest.approx(0.8)  # everything positive: 2*2/(2+1+2)


@pytest.mark.parametrize("fn", [binary_auroc, binary_average_precision, f1_max])
def test_ranking_metrics_undefined_for_one_label(fn):
    with pytest.raises(UndefinedMetricError, match="only one label"):
        fn([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(UndefinedMetricError, match="only one label"):
        fn([0.1, 0.2, 0.3], [0, 0, 0])


def test_ranking_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        binary_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        binary_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        binary_auroc([0.1, 0.2, 0.3], [0, 1])


# --------------------------------------------------------------------------------------------------------
# Exact PRO / AUPRO vs the brute force
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("n_levels", [None, 2, 4, 9])
def test_aupro_matches_brute_force(fpr_limit, n_levels):
    rng = np.random.default_rng(int(fpr_limit * 100) + (n_levels or 0))
    checked = 0
    for _ in range(25):
        maps, masks = random_case(rng, n_levels)
        if not masks.any() or masks.all():
            continue
        expected = brute_force_aupro(list(maps), list(masks), fpr_limit)
        assert aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12)
        values, reasons = pixel_metrics(maps, masks, fpr_limit)  # shared full sort path
        assert values["aupro"] == pytest.approx(expected, abs=1e-12), reasons
        checked += 1
    assert checked >= 15


def test_pro_curve_is_the_brute_force_polyline():
    rng = np.random.default_rng(5)
    for _ in range(20):
        maps, masks = random_case(rng, n_levels=3)
        if not masks.any() or masks.all():
            continue
        x, y = pro_curve(maps, masks)
        bx, by = brute_force_curve(list(maps), list(masks))
        # Same polyline: every brute-force vertex lies on ours and the areas agree for any limit.
        for limit in (0.1, 0.3, 0.5, 1.0):
            assert trapezoid_area(x, y, limit) == pytest.approx(mvtec_trapezoid(bx, by, limit), abs=1e-12)
        assert x[0] == 0 and y[0] == 0 and x[-1] == 1 and y[-1] == 1
        assert bool((torch.diff(x) >= 0).all())


def test_known_answer():
    # 10 anomaly-free pixels scored 0..9 and one region scored {8.5, 100}: the curve runs
    # (0,0) (0,.5) (.1,.5) (.1,1) (.2,1) (.3,1) ... so the area up to 0.3 is .1*.5 + .2*1 = .25.
    maps = np.array([[*range(10), 8.5, 100.0]], dtype=np.float32)
    masks = np.zeros_like(maps, dtype=bool)
    masks[0, 10:] = True
    assert aupro(maps, masks, 0.3) == pytest.approx(0.25 / 0.3, abs=1e-15)
    x, y = pro_curve(maps, masks, fpr_limit=0.3)
    assert x.tolist() == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4])
    assert y.tolist() == pytest.approx([0, 0.5, 0.5, 1, 1, 1, 1, 1, 1])


def test_perfect_inverted_and_constant_maps():
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[1, 1:3, 1:4] = True
    masks[1, 4:, 4:] = True
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == 1.0
    assert aupro(1.0 - perfect, masks) == 0.0
    # All pixels tie: one threshold takes FPR and PRO from 0 to 1 together; interpolated at 0.3 the area is
    # 0.3 * 0.3 / 2, normalised 0.15.
    constant = np.full((2, 6, 6), 0.5, dtype=np.float32)
    assert aupro(constant, masks) == pytest.approx(0.15, abs=1e-15)
    assert aupro(constant, masks) == pytest.approx(brute_force_aupro(list(constant), list(masks), 0.3))


def test_curve_that_jumps_over_the_limit():
    # All anomaly-free pixels share one score below every anomalous pixel: the curve's last vertex before
    # the limit is at FPR 0, and the next one at FPR 1: (0,0) -> (0,1) -> (1,1). AUPRO = 1.
    maps = np.zeros((1, 5, 5), dtype=np.float32)
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, :2, :2] = True
    maps[masks] = np.linspace(1, 2, 4)
    assert aupro(maps, masks) == 1.0
    x, y = pro_curve(maps, masks, fpr_limit=0.3)
    assert x.tolist() == [0.0, 0.0, 1.0] and y.tolist() == [0.0, 1.0, 1.0]


def test_trapezoid_area_of_a_curve_ending_before_the_limit():
    # Integrated to its end, never extrapolated.
    assert trapezoid_area([0.0, 0.1, 0.2], [0.0, 1.0, 1.0], 0.3) == pytest.approx(0.15)
    assert trapezoid_area([0.0, 0.2, 0.4], [0.0, 1.0, 1.0], 0.3) == pytest.approx(0.1 + 0.1)
    assert trapezoid_area([0.0, 0.3, 0.4], [1.0, 1.0, 1.0], 0.3) == pytest.approx(0.3)


def test_fpr_limit_one_is_the_whole_curve():
    rng = np.random.default_rng(9)
    maps, masks = random_case(rng, n_levels=5, n_images=3)
    masks[0, 0, 0] = True
    x, y = pro_curve(maps, masks)
    assert aupro(maps, masks, 1.0) == pytest.approx(trapezoid_area(x, y, 1.0), abs=1e-12)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, 1.5)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, 0.0)


def test_one_outlier_pixel_barely_moves_exact_but_stretches_legacy():
    rng = np.random.default_rng(3)
    maps = rng.random((4, 16, 16)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[:2, 3:8, 4:9] = True
    maps[masks] += 0.4
    exact, legacy = aupro(maps, masks), legacy_cflow_aupro(maps, masks)
    with_outlier = maps.copy()
    with_outlier[3, 0, 0] = 50.0  # one anomaly-free pixel with an absurd score: thresholds 0.25 apart
    n_ok = int((~masks).sum())
    assert abs(aupro(with_outlier, masks) - exact) <= 1.0 / (0.3 * n_ok) + 1e-12
    assert abs(legacy_cflow_aupro(with_outlier, masks) - legacy) > 0.02
    with_outlier[3, 0, 0] = 1e4  # all but one legacy threshold above every other pixel
    assert abs(aupro(with_outlier, masks) - exact) <= 1.0 / (0.3 * n_ok) + 1e-12
    with pytest.raises(UndefinedMetricError, match="legacy"):
        legacy_cflow_aupro(with_outlier, masks)


def test_ties_bias_legacy_not_exact():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 32, 32)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[:2, 3:12, 4:13] = True
    maps[masks] += 0.5
    clipped = np.minimum(maps, np.float32(0.8))  # clamping creates a large tie at the top
    exact = aupro(clipped, masks)
    assert exact == pytest.approx(brute_force_aupro(list(clipped), list(masks), 0.3), abs=1e-12)
    assert legacy_cflow_aupro(clipped, masks) - exact > 0.2


def test_exact_is_invariant_to_monotone_transforms():
    rng = np.random.default_rng(4)
    maps = rng.random((3, 12, 12))
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[2, 7:, :3] = True
    maps[masks] += 0.3
    assert aupro(np.exp(5 * maps), masks) == pytest.approx(aupro(maps, masks), abs=1e-12)


def test_images_without_regions_count_only_in_the_fpr():
    rng = np.random.default_rng(6)
    maps, masks = random_case(rng, n_levels=6, n_images=2)
    masks[0, 0, 0] = True
    extra_map = rng.integers(0, 6, (5, 4)).astype(np.float32)
    extra_mask = np.zeros((5, 4), dtype=bool)
    all_maps = [*maps, extra_map]
    all_masks = [*masks, extra_mask]
    assert aupro(all_maps, all_masks) == pytest.approx(brute_force_aupro(all_maps, all_masks, 0.3), abs=1e-12)
    with pytest.raises(UndefinedMetricError, match="no anomalous regions"):
        aupro([extra_map], [extra_mask])
    with pytest.raises(UndefinedMetricError, match="no anomaly-free pixels"):
        aupro([extra_map], [~extra_mask])


def test_regions_are_8_connected_and_count_once_each():
    # Two diagonal pixels form one region (8-connectivity), a distant pixel another: PRO weights each
    # region equally whatever its size.
    maps = np.zeros((1, 6, 6), dtype=np.float32)
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region of 2 pixels
    masks[0, 5, 5] = True  # one region of 1 pixel
    maps[0, 0, 0] = 2.0  # half of the first region detected above all normals
    maps[0, 5, 5] = 2.0  # the whole second region
    x, y = pro_curve(maps, masks)
    # First vertex after (0,0): PRO = (1/2 + 1) / 2 = 0.75 (4-connectivity would give (1+0+1)/3).
    assert y[1].item() == pytest.approx(0.75)


def test_float16_maps_are_exact_for_their_values():
    rng = np.random.default_rng(7)
    for _ in range(10):
        maps, masks = random_case(rng)
        if not masks.any() or masks.all():
            continue
        half = maps.astype(np.float16)
        expected = brute_force_aupro(list(half.astype(np.float64)), list(masks), 0.3)
        assert aupro(half, masks) == pytest.approx(expected, abs=1e-12)
        assert aupro(torch.from_numpy(half), torch.from_numpy(masks)) == pytest.approx(expected, abs=1e-12)
        assert aupro(torch.from_numpy(maps).bfloat16(), masks) == pytest.approx(
            brute_force_aupro(list(torch.from_numpy(maps).bfloat16().double().numpy()), list(masks), 0.3),
            abs=1e-12,
        )


def test_maps_of_different_sizes_and_numeric_masks():
    rng = np.random.default_rng(8)
    maps = [rng.random((5, 7)), rng.random((3, 4)).astype(np.float32), rng.random((6, 6))]
    masks = [rng.random((5, 7)) < 0.3, np.zeros((3, 4), dtype=np.uint8), (rng.random((6, 6)) < 0.3) * 255]
    expected = brute_force_aupro(maps, masks, 0.3)
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert aupro([torch.from_numpy(m) for m in maps], [torch.from_numpy(np.asarray(g)) for g in masks]) == (
        pytest.approx(expected, abs=1e-12)
    )


def test_input_validation():
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match="shape"):
        aupro(maps, masks[:, :3])
    with pytest.raises(ValueError, match="masks"):
        aupro(maps, masks[:1])
    bad = maps.copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro(bad, masks)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro(bad, masks)
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(np.where(masks, 0, np.nan), masks)


# --------------------------------------------------------------------------------------------------------
# Legacy cflow-style AUPRO
# --------------------------------------------------------------------------------------------------------


def test_legacy_matches_the_anomalyclip_code():
    rng = np.random.default_rng(11)
    for _ in range(8):
        maps = rng.random((3, 10, 12)).astype(np.float32)
        masks = np.zeros(maps.shape, dtype=np.uint8)
        masks[0, 2:5, 3:7] = 1
        masks[2, 6:9, 1:3] = 1
        masks[2, 0, 11] = 1
        maps[masks > 0] += np.float32(rng.uniform(0.1, 0.6))
        assert legacy_cflow_aupro(maps, masks) == pytest.approx(anomalyclip_pro(masks, maps), abs=1e-12)


def test_legacy_undefined_cases():
    rng = np.random.default_rng(12)
    maps = rng.random((2, 16, 16)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 4:9, 4:9] = True
    maps[masks] += 0.5
    with pytest.raises(UndefinedMetricError, match="all anomaly scores are equal"):
        legacy_cflow_aupro(np.ones_like(maps), masks)
    with pytest.raises(UndefinedMetricError, match="no anomalous regions"):
        legacy_cflow_aupro(maps, np.zeros_like(masks))
    values, reasons = pixel_metrics(np.ones_like(maps), masks)
    assert values["aupro_cflow"] is None and "legacy" in reasons["aupro_cflow"]
    assert values["aupro"] is not None and values["pixel_auroc"] == 0.5
    infinite = maps.copy()
    infinite[1, 0, 0] = np.inf
    values, reasons = pixel_metrics(infinite, masks)
    assert values["aupro_cflow"] is None and "infinity" in reasons["aupro_cflow"]


# --------------------------------------------------------------------------------------------------------
# Shared pixel metrics and backends
# --------------------------------------------------------------------------------------------------------


def test_pixel_metrics_match_sklearn_and_aupro():
    rng = np.random.default_rng(13)
    maps, masks = random_case(rng, n_levels=7, n_images=3)
    masks[0, 0, 0], masks[0, 0, 1] = True, False
    values, reasons = pixel_metrics(maps, masks)
    assert reasons == {}
    y, s = masks.ravel(), maps.ravel()
    assert values["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert values["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert values["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    assert values["aupro_cflow"] == pytest.approx(anomalyclip_pro(masks, maps), abs=1e-12)
    assert values["pixel_aupr"] == pytest.approx(anomalib_aupr(s, y), abs=1e-12)
    values, reasons = pixel_metrics(maps, np.zeros_like(masks))
    assert values == dict.fromkeys(("aupro", "aupro_cflow", "pixel_auroc", "pixel_ap", "pixel_aupr"))
    assert "no anomalous" in reasons["pixel_auroc"] and "no anomalous regions" in reasons["aupro"]
    assert "no anomalous regions" in reasons["aupro_cflow"]
    with pytest.raises(ValueError, match="unknown pixel metrics"):
        pixel_metrics(maps, masks, metrics=("aupro_legacy",))


def test_torch_backend_equals_numpy_backend(monkeypatch):
    """The accelerator code path (torch ops) runs here on CPU tensors and must agree exactly."""
    rng = np.random.default_rng(14)
    maps, masks = random_case(rng, n_levels=9, n_images=3)
    masks[1, 0, 0] = True
    masks[1, 0, 1] = False
    numpy_values = (aupro(maps, masks), legacy_cflow_aupro(maps, masks), pixel_metrics(maps, masks)[0])
    monkeypatch.setattr(_split, "_pick_ops", lambda arrays: _arrays._TorchOps(torch.device("cpu")))
    torch_values = (aupro(maps, masks), legacy_cflow_aupro(maps, masks), pixel_metrics(maps, masks)[0])
    assert torch_values[0] == pytest.approx(numpy_values[0], abs=1e-12)
    assert torch_values[1] == pytest.approx(numpy_values[1], abs=1e-12)
    for name, value in numpy_values[2].items():
        assert torch_values[2][name] == pytest.approx(value, abs=1e-12)
    big = rng.random((3, 40, 40)).astype(np.float32)
    big_masks = np.zeros(big.shape, dtype=bool)
    big_masks[0, 5:20, 5:20] = True
    assert aupro(big, big_masks) == pytest.approx(
        brute_force_aupro(list(big), list(big_masks), 0.3), abs=1e-12
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_match_cpu():
    rng = np.random.default_rng(15)
    maps = torch.from_numpy(rng.random((8, 64, 64)).astype(np.float32))
    masks = torch.zeros(maps.shape, dtype=torch.bool)
    masks[:4, 10:30, 20:40] = True
    maps[masks] += 0.2
    cpu = pixel_metrics(maps, masks)[0]
    gpu = pixel_metrics(maps.cuda(), masks.cuda())[0]
    for name, value in cpu.items():
        assert gpu[name] == pytest.approx(value, abs=1e-9)
    assert aupro(maps.cuda(), masks.cuda()) == pytest.approx(aupro(maps, masks), abs=1e-9)
    half_cpu = pixel_metrics(maps.half(), masks)[0]  # 16-bit scores: bit-pattern counts on the device
    half_gpu = pixel_metrics(maps.half().cuda(), masks.cuda())[0]
    for name, value in half_cpu.items():
        assert half_gpu[name] == pytest.approx(value, abs=1e-12)
    assert legacy_cflow_aupro(maps.cuda(), masks.cuda()) == pytest.approx(
        legacy_cflow_aupro(maps, masks), abs=1e-9
    )


def test_numpy_blocked_searchsorted_and_parallel_sort():
    """The CPU fast paths (cache-blocked search for sorted needles, multi-threaded sort) are exact."""
    ops = _arrays._NumpyOps()
    rng = np.random.default_rng(16)
    for levels in (3, 1000, 10**9):
        seq = np.sort(rng.integers(0, levels, 300_000).astype(np.float32))
        needles = np.sort(rng.integers(-1, levels + 1, 5_000).astype(np.float32))
        for right in (True, False):
            expected = np.searchsorted(seq, needles, side="right" if right else "left")
            assert np.array_equal(ops.searchsorted(seq, needles, right, sorted_needles=True), expected)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = rng.integers(0, 50, 4_500_000).astype(np.float32)
        expected = np.sort(x)
        assert np.array_equal(ops.sort_(x), expected)
        assert _arrays._thread_count(16 * 300_000) == 2  # so the search below runs on two threads
        seq = np.sort(rng.normal(size=1_000_000).astype(np.float32))
        needles = np.sort(
            np.concatenate([seq[::7], rng.normal(size=300_000 - len(seq[::7]))]).astype(np.float32)
        )
        for right in (True, False):
            expected = np.searchsorted(seq, needles, side="right" if right else "left")
            assert np.array_equal(ops.searchsorted(seq, needles, right, sorted_needles=True), expected)
    finally:
        torch.set_num_threads(threads)


def test_float32_argsort_by_packed_keys_matches_numpy():
    rng = np.random.default_rng(17)
    x = rng.normal(size=50_000).astype(np.float32)
    x[::97] = np.float32(1.5)  # ties
    x[5], x[6], x[7] = np.inf, -np.inf, np.float32(-3e38)
    order = _arrays._argsort_float32(x)
    assert np.array_equal(order, np.argsort(x, kind="stable"))  # ties keep index order
    zeros = np.array([0.0, -0.0, 1.0, -1.0, -0.0], dtype=np.float32)
    assert np.array_equal(zeros[_arrays._argsort_float32(zeros)], np.sort(zeros))


# --------------------------------------------------------------------------------------------------------
# Fast paths: 16-bit histograms and the AUPRO prefilter must give the same numbers as the general path
# --------------------------------------------------------------------------------------------------------
#: Without aupro_cflow (which needs per-pixel regions), 16-bit scores take the histogram path.
EXACT_PIXEL = ("pixel_auroc", "pixel_ap", "aupro")


def _assert_same_metrics(fast, general, atol=1e-12):
    assert fast[1] == general[1]
    for name, value in general[0].items():
        if value is None:
            assert fast[0][name] is None
        else:
            assert fast[0][name] == pytest.approx(value, abs=atol), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_scores_use_histograms_with_the_same_results(dtype):
    rng = np.random.default_rng(18)
    maps = torch.from_numpy(rng.normal(size=(6, 20, 24)).astype(np.float32))
    masks = torch.from_numpy(rng.random((6, 20, 24)) < 0.2)
    masks[2] = False  # an image without anomalies
    maps[masks] += 1.0
    maps[0, :4, :4] = 0.0
    maps[1, :4, :4] = -0.0  # the same threshold as +0.0
    maps[3, 0, :3] = torch.tensor([float("inf"), float("-inf"), 2.0])
    low = maps.to(dtype)
    as_float32 = low.float()  # exact: every 16-bit value is a float32
    fast = _histogram._histogram_pixels(list(low), list(masks))
    assert fast.n_neg == int((~masks).sum()) and fast.n_pos == int(masks.sum())
    for limit in (0.01, 0.3, 1.0):
        _assert_same_metrics(
            pixel_metrics(low, masks, limit, EXACT_PIXEL),
            pixel_metrics(as_float32, masks, limit, EXACT_PIXEL),
        )
        assert aupro(low, masks, limit) == pytest.approx(aupro(as_float32, masks, limit), abs=1e-12)
        x16, y16 = pro_curve(low, masks, limit)
        x32, y32 = pro_curve(as_float32, masks, limit)
        assert torch.allclose(x16, x32, rtol=0, atol=1e-12) and torch.allclose(y16, y32, rtol=0, atol=1e-12)
    if dtype == torch.float16:  # numpy float16 takes the same path
        _assert_same_metrics(
            pixel_metrics(low.numpy(), masks.numpy(), metrics=EXACT_PIXEL),
            pixel_metrics(as_float32, masks, metrics=EXACT_PIXEL),
        )


def test_16bit_histograms_report_nan_and_undefined_metrics():
    maps = torch.rand(2, 8, 8).half()
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:4] = True
    values, reasons = pixel_metrics(maps, torch.zeros_like(masks), metrics=EXACT_PIXEL)
    assert values == {"aupro": None, "pixel_auroc": None, "pixel_ap": None}
    assert "no anomalous regions" in reasons["aupro"] and "no anomalous pixels" in reasons["pixel_auroc"]
    values, reasons = pixel_metrics(maps, torch.ones_like(masks), metrics=EXACT_PIXEL)
    assert values["aupro"] is None and "no anomaly-free pixels" in reasons["aupro"]
    bad = maps.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN .at anomaly-free"):
        pixel_metrics(bad, masks, metrics=EXACT_PIXEL)
    bad = maps.clone()
    bad[0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN .at anomalous"):
        aupro(bad, masks)


def test_aupro_prefilter_is_exact_and_falls_back_when_the_sample_misleads(monkeypatch):
    """Large inputs copy only the anomaly-free pixels above a sampled floor; forced on tiny inputs here."""
    monkeypatch.setattr(_split, "_PREFILTER_MIN_PIXELS", 0)
    monkeypatch.setattr(_split, "_PREFILTER_SAMPLE", 64)
    rng = np.random.default_rng(19)
    for n_levels in (None, 5):
        maps, masks = random_case(rng, n_levels=n_levels, n_images=4)
        maps = np.concatenate([maps, rng.normal(size=(2, *maps.shape[1:])).astype(np.float32)])
        masks = np.concatenate([masks, np.zeros((2, *masks.shape[1:]), dtype=bool)])
        masks[0, 0, 0] = True
        for limit in (0.1, 0.3):
            split = _split._split_pixels(maps, masks, aupro_fpr_limit=limit)
            assert split.n_neg == int((~masks).sum())
            expected = brute_force_aupro(list(maps), list(masks), limit)
            assert aupro(maps, masks, limit) == pytest.approx(expected, abs=1e-12)
            assert pixel_metrics(maps, masks, limit, metrics=("aupro",))[0]["aupro"] == pytest.approx(
                expected, abs=1e-12
            )
    big = rng.normal(size=(4, 30, 30)).astype(np.float32)
    big_masks = np.zeros(big.shape, dtype=bool)
    big_masks[:2, 5:12, 5:12] = True
    big[big_masks] += 1.0
    assert _split._split_pixels(big, big_masks, aupro_fpr_limit=0.3).n_neg_below > 0  # it did filter
    expected = brute_force_aupro(list(big), list(big_masks), 0.3)
    assert aupro(big, big_masks) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(_split, "_PREFILTER_MARGIN", -0.25)  # a floor above t*: too few pixels kept
    assert _split._split_pixels(big, big_masks, aupro_fpr_limit=0.3).n_neg_below == 0
    assert aupro(big, big_masks) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(_split, "_PREFILTER_MARGIN", 0.02)
    big[3, 0, 0] = np.nan  # NaN never falls below the floor: it is reported, not dropped
    with pytest.raises(ValueError, match="NaN"):
        aupro(big, big_masks)
