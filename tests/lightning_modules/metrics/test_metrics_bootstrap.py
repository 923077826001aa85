"""Resampled metrics (bootstrap.py) against direct recomputation: every resample's images built as a list
(an image drawn twice appears twice) and scored by zsad's own functions. AUROC and F1-max must be equal bit
for bit, AP and both AUPROs to float rounding (1e-12); undefined values NaN where the direct ones raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.metrics import (
    UndefinedMetricError,
    binary_auroc,
    binary_average_precision,
    f1_max,
    pixel_metrics,
)
from lightning_modules.metrics.bootstrap import ResampledCategory, stratified_weights

EXACT = ("image_auroc", "image_f1_max", "pixel_auroc")


def category(rng: np.random.Generator, n: int = 11, size: int = 12, levels: int | None = 40):
    """Scores and maps with ties (``levels`` distinct values), masks with several 8-connected regions, an
    anomalous image with an empty mask (image 7) and an image without pixel ground truth (image 3)."""
    labels = np.array([0] * 5 + [1] * (n - 5))
    scores = np.round(rng.random(n) * 5) / 5
    maps, masks = [], []
    for i in range(n):
        m = rng.random((size, size))
        m = np.round(m * levels) / levels if levels else m
        g = np.zeros((size, size), dtype=bool)
        if labels[i] and i != 7:
            g[1:4, 1:5] = True
            g[7:10, 6:11] = rng.random((3, 5)) > 0.4
            m = m + 0.3 * g
        maps.append(m.astype(np.float32))
        masks.append(g)
    maps[3] = masks[3] = None
    return scores, labels, maps, masks


def direct(scores, labels, maps, masks, multiplicity, fpr_limit):
    """Every metric of one resample, as an evaluation of the drawn images would compute it."""
    drawn = np.repeat(np.arange(len(labels)), multiplicity)
    s, y = scores[drawn], labels[drawn]
    out = {}
    for name, fn in (
        ("image_auroc", binary_auroc),
        ("image_ap", binary_average_precision),
        ("image_f1_max", f1_max),
    ):
        try:
            out[name] = fn(s, y)
        except UndefinedMetricError:
            out[name] = None
    with_gt = [i for i in drawn if maps[i] is not None]
    if with_gt:
        values, _ = pixel_metrics(
            [maps[i] for i in with_gt], [masks[i] for i in with_gt], fpr_limit=fpr_limit
        )
        out.update(values)
    return out


def check(got: dict[str, np.ndarray], weights: np.ndarray, *inputs, fpr_limit: float) -> None:
    for b in range(weights.shape[0]):
        for name, value in direct(*inputs, weights[b], fpr_limit).items():
            if value is None:
                assert np.isnan(got[name][b]), (name, b)
            elif name in EXACT:
                assert got[name][b] == value, (name, b)
            else:
                assert got[name][b] == pytest.approx(value, abs=1e-12, rel=0), (name, b)


@pytest.mark.parametrize(("fpr_limit", "levels"), [(0.3, 40), (0.3, None), (0.05, 8), (1.0, 40)])
def test_every_resample_equals_direct_recomputation(fpr_limit, levels):
    rng = np.random.default_rng(7)
    inputs = category(rng, levels=levels)
    weights = stratified_weights(inputs[1], 30, rng)
    weights[0] = 1  # the category itself
    got = ResampledCategory(*inputs, fpr_limit=fpr_limit).metrics(weights)
    check(got, weights, *inputs, fpr_limit=fpr_limit)
    assert not np.isnan(got["aupro"]).any() and not np.isnan(got["pixel_ap"]).any()


def test_undefined_resamples_are_nan_and_float64_and_16_bit_maps_are_exact():
    rng = np.random.default_rng(3)
    scores, labels, maps, masks = category(rng)
    weights = np.ones((3, len(labels)), dtype=np.int64)
    weights[1, 5:] = 0
    weights[1, 7] = 6  # the only anomalous image drawn has an empty mask: no anomalous pixels
    weights[2, :5] = 0
    weights[2, 0] = 5
    maps64 = [None if m is None else m.astype(np.float64) + 1e-9 * rng.random(m.shape) for m in maps]
    got = ResampledCategory(scores, labels, maps64, masks).metrics(weights)
    assert np.isnan([got[m][1] for m in ("pixel_auroc", "pixel_ap", "aupro", "aupro_cflow")]).all()
    check(got, weights, scores, labels, maps64, masks, fpr_limit=0.3)
    half = [
        None if m is None else torch.from_numpy(m).half() for m in maps
    ]  # as eval.pixel_score_dtype=float16
    got = ResampledCategory(scores, labels, half, masks).metrics(weights)
    check(
        got,
        weights,
        scores,
        labels,
        [None if m is None else m.float().numpy() for m in half],
        masks,
        fpr_limit=0.3,
    )


def test_stratified_weights_keep_each_label_count_and_are_seeded():
    labels = np.array([0, 1, 1, 0, 1, 1, 1])
    weights = stratified_weights(labels, 200, np.random.default_rng(0))
    assert weights.shape == (200, 7) and (weights >= 0).all()
    assert (weights[:, labels == 0].sum(axis=1) == 2).all() and (
        weights[:, labels == 1].sum(axis=1) == 5
    ).all()
    assert np.array_equal(weights, stratified_weights(labels, 200, np.random.default_rng(0)))
    assert (weights[:, labels == 1] == 0).any() and (weights > 1).any()  # a resample, not a permutation


def test_metrics_carried_across_blocks_of_thresholds_equal_direct_recomputation(monkeypatch):
    """Blocks of 64 thresholds (the pixel AUPR's drawn neighbours then lie in other blocks)."""
    import lightning_modules.metrics.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "_BLOCK", 1)
    rng = np.random.default_rng(11)
    inputs = category(rng, size=20, levels=None)
    weights = stratified_weights(inputs[1], 12, rng)
    weights[0] = 1
    got = ResampledCategory(*inputs).metrics(weights)
    check(got, weights, *inputs, fpr_limit=0.3)
    assert np.isfinite(got["pixel_aupr"]).all()
