"""AnomalyEvaluator: per-category accumulation, category mean, missing-with-reason, duplicates, storage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from aupr_reference import anomalib_aupr
from sklearn.metrics import average_precision_score, roc_auc_score

from lightning_modules.metrics import (
    METRIC_NAMES,
    AnomalyEvaluator,
    EvaluationResult,
    aupro,
    f1_max,
    legacy_cflow_aupro,
)

CATEGORIES = ["bottle", "cable", "skin", "brain"]


def make_samples(seed: int = 0):
    """bottle: normal + anomalous with masks (8x8); cable: same at 6x10; skin: anomalous only (no normals);
    brain: image labels only, no pixel ground truth."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    sid = 0
    for cat, (h, w), n_normal, n_anomalous, masked in [
        (0, (8, 8), 4, 5, True),
        (1, (6, 10), 3, 3, True),
        (2, (8, 8), 0, 4, True),
        (3, (8, 8), 3, 3, False),
    ]:
        for i in range(n_normal + n_anomalous):
            label = int(i >= n_normal)
            amap = torch.rand(h, w, generator=g)
            mask = torch.zeros(h, w, dtype=torch.bool)
            if label:
                r, c = (
                    int(torch.randint(0, h - 3, (1,), generator=g)),
                    int(torch.randint(0, w - 3, (1,), generator=g)),
                )
                mask[r : r + 3, c : c + 2] = True
                if i % 2:
                    mask[h - 1, w - 1] = True  # a second region
                amap[mask] += 0.4
            score = float(amap.max()) + 0.1 * float(torch.rand(1, generator=g))
            samples.append(
                dict(cat=cat, sid=sid, score=score, label=label, map=amap, mask=mask, has_mask=masked)
            )
            sid += 1
    return samples


def feed(ev: AnomalyEvaluator, samples, batch_size: int = 3) -> None:
    """Batches never mix image sizes (as a real test loop over one category at a time)."""
    by_shape: dict[tuple, list] = {}
    for s in samples:
        by_shape.setdefault(tuple(s["map"].shape), []).append(s)
    for group in by_shape.values():
        for i in range(0, len(group), batch_size):
            b = group[i : i + batch_size]
            ev.update(
                torch.tensor([s["cat"] for s in b]),
                torch.tensor([s["sid"] for s in b]),
                torch.tensor([s["score"] for s in b]),
                torch.tensor([s["label"] for s in b]),
                torch.stack([s["map"] for s in b]),
                torch.stack([s["mask"] for s in b]),
                torch.tensor([s["has_mask"] for s in b]),
            )


def update_one(ev: AnomalyEvaluator, s: dict, with_masks: bool = True) -> None:
    """One sample: its map, and its mask unless with_masks is False."""
    masks = (s["mask"][None], torch.tensor([s["has_mask"]])) if with_masks else ()
    ev.update(
        torch.tensor([s["cat"]]),
        torch.tensor([s["sid"]]),
        torch.tensor([s["score"]]),
        torch.tensor([s["label"]]),
        s["map"][None],
        *masks,
    )


def expected_metrics(samples, dtype=torch.float32):
    out = {}
    for ci, name in enumerate(CATEGORIES):
        ss = [s for s in samples if s["cat"] == ci]
        y = np.array([s["label"] for s in ss])
        sc = np.array([s["score"] for s in ss])
        v = dict.fromkeys(METRIC_NAMES)
        if 0 < y.sum() < len(y):
            v["image_auroc"] = roc_auc_score(y, sc)
            v["image_ap"] = average_precision_score(y, sc)
            v["image_f1_max"] = f1_max(sc, y)
        if ss[0]["has_mask"]:
            maps = [s["map"].to(dtype).double().numpy() for s in ss]
            masks = [s["mask"].numpy() for s in ss]
            v["pixel_auroc"] = roc_auc_score(
                np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
            )
            v["pixel_ap"] = average_precision_score(
                np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
            )
            v["pixel_aupr"] = anomalib_aupr(
                np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])
            )
            v["aupro"] = aupro(maps, masks)
            v["aupro_cflow"] = legacy_cflow_aupro(maps, masks)
        out[name] = v
    return out


def test_per_category_values_mean_and_missing():
    """float32 storage (the default) is exact: the metrics equal sklearn's on the float32 maps."""
    samples = make_samples()
    ev = AnomalyEvaluator(CATEGORIES)
    feed(ev, samples)
    assert ev.pix_scores[0].dtype == torch.float32
    res = ev.compute()
    expected = expected_metrics(samples)
    for name in CATEGORIES:
        for metric in METRIC_NAMES:
            want, got = expected[name][metric], res.per_category[name][metric]
            if want is None:
                assert got is None, (name, metric)
                assert res.missing[name][metric]
            else:
                assert got == pytest.approx(want, abs=1e-12), (name, metric)
                assert metric not in res.missing[name]
    assert "no normal images" in res.missing["skin"]["image_auroc"]
    assert "no pixel ground truth" in res.missing["brain"]["aupro"]
    assert res.num_images == {"bottle": 9, "cable": 6, "skin": 4, "brain": 6}
    # Unweighted mean over the categories where each metric is defined.
    assert res.mean_counts == {
        "image_auroc": 3,
        "image_ap": 3,
        "image_f1_max": 3,
        "pixel_auroc": 3,
        "pixel_ap": 3,
        "pixel_aupr": 3,
        "aupro": 3,
        "aupro_cflow": 3,
    }
    for metric in METRIC_NAMES:
        vals = [expected[c][metric] for c in CATEGORIES if expected[c][metric] is not None]
        assert res.mean[metric] == pytest.approx(math.fsum(vals) / len(vals), abs=1e-12)
    rows = res.to_rows()
    assert [r["category"] for r in rows] == [*CATEGORIES, "mean"]
    assert rows[-1]["aupro"] == res.mean["aupro"] and rows[-1]["num_images"] == 25
    table = res.format_table()
    assert "skin" in table and "-" in table


def test_duplicates_and_order_do_not_change_anything():
    samples = make_samples(1)
    ref = AnomalyEvaluator(CATEGORIES)
    feed(ref, samples)
    expected = ref.compute()
    ev = AnomalyEvaluator(CATEGORIES)
    shuffled = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))]
    feed(ev, shuffled + samples[:1] + samples[-2:], batch_size=2)  # padded duplicates at the end
    got = ev.compute()
    assert got.duplicates_dropped == 3
    assert got.per_category == expected.per_category  # bit-identical, not just close
    assert got.mean == expected.mean and got.missing == expected.missing


def test_float16_storage_is_exact_for_rounded_maps():
    samples = make_samples(2)
    ev = AnomalyEvaluator(CATEGORIES, pixel_score_dtype=torch.float16)
    feed(ev, samples)
    res = ev.compute()
    assert ev.pix_scores[0].dtype == torch.float16 and ev.pix_masks[0].dtype == torch.uint8
    assert res.pixel_score_dtype == "float16" and res.to_dict()["pixel_score_dtype"] == "float16"
    expected = expected_metrics(samples, dtype=torch.float16)
    for name in ("bottle", "cable", "skin"):
        for metric in ("pixel_auroc", "pixel_ap", "aupro", "aupro_cflow"):
            assert res.per_category[name][metric] == pytest.approx(expected[name][metric], abs=1e-12)


def test_float16_overflow_and_bad_inputs_are_rejected():
    ev = AnomalyEvaluator(["a"], pixel_score_dtype=torch.float16)
    one = dict(category_ids=torch.tensor([0]), sample_ids=torch.tensor([0]), image_scores=torch.tensor([1.0]))
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="float16"):
        ev.update(**one, labels=torch.tensor([1]), anomaly_maps=torch.full((1, 4, 4), 1e5), masks=masks)
    with pytest.raises(ValueError, match="NaN"):
        ev.update(**one, labels=torch.tensor([1]), anomaly_maps=torch.full((1, 4, 4), math.nan), masks=masks)
    with pytest.raises(ValueError, match="0/1"):
        ev.update(**one, labels=torch.tensor([2]))
    with pytest.raises(ValueError, match="category_ids"):
        ev.update(torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="differ"):
        ev.update(
            **one, labels=torch.tensor([1]), anomaly_maps=torch.zeros(1, 4, 4), masks=torch.zeros(1, 4, 5)
        )
    with pytest.raises(ValueError, match="aupro_method was removed"):
        AnomalyEvaluator(["a"], aupro_method="legacy_cflow")
    with pytest.raises(ValueError, match="fpr_limit"):
        AnomalyEvaluator(["a"], fpr_limit=0)
    ev32 = AnomalyEvaluator(["a"], pixel_score_dtype=torch.float32)
    ev32.update(**one, labels=torch.tensor([1]), anomaly_maps=torch.full((1, 4, 4), 1e5), masks=masks)


def test_maps_without_masks_and_disabled_pixel_metrics():
    samples = make_samples(3)
    ev = AnomalyEvaluator(CATEGORIES)
    for s in samples:  # maps but never masks
        update_one(ev, s, with_masks=False)
    res = ev.compute()
    assert res.per_category["bottle"]["aupro"] is None
    assert "no pixel ground truth" in res.missing["bottle"]["aupro"]
    assert len(ev.pix_scores) == 0  # nothing stored for samples without ground truth

    ev = AnomalyEvaluator(CATEGORIES)
    for s in samples:  # image scores only
        ev.update(
            torch.tensor([s["cat"]]),
            torch.tensor([s["sid"]]),
            torch.tensor([s["score"]]),
            torch.tensor([s["label"]]),
        )
    res = ev.compute()
    assert res.missing["cable"]["pixel_auroc"] == "no anomaly maps were given"
    assert res.per_category["cable"]["image_auroc"] is not None

    ev = AnomalyEvaluator(CATEGORIES, pixel_metrics=False)
    feed(ev, samples)
    res = ev.compute()
    assert len(ev.pix_scores) == 0
    assert "disabled" in res.missing["bottle"]["aupro"] and res.mean["aupro"] is None
    assert res.mean_counts["aupro"] == 0


def test_mixed_has_mask_uses_only_samples_with_ground_truth():
    samples = make_samples(4)
    bottle = [s for s in samples if s["cat"] == 0]
    for s in bottle[::3]:
        s["has_mask"] = False
    ev = AnomalyEvaluator(["bottle"], pixel_score_dtype=torch.float32)
    feed(ev, bottle)
    res = ev.compute()
    kept = [s for s in bottle if s["has_mask"]]
    assert res.per_category["bottle"]["aupro"] == pytest.approx(
        aupro([s["map"] for s in kept], [s["mask"] for s in kept]), abs=1e-12
    )
    assert any("left out of the pixel metrics" in n for n in res.notes)


def test_no_anomalous_pixels_and_no_samples():
    ev = AnomalyEvaluator(["a", "b"])
    maps = torch.rand(3, 5, 5)
    ev.update(
        torch.tensor([0, 0, 0]),
        torch.arange(3),
        torch.rand(3),
        torch.tensor([0, 1, 0]),
        maps,
        torch.zeros(3, 5, 5, dtype=torch.bool),
    )
    res = ev.compute()
    assert res.per_category["a"]["image_auroc"] is not None
    assert "no anomalous" in res.missing["a"]["pixel_auroc"]
    assert "no anomalous regions" in res.missing["a"]["aupro"]
    assert set(res.missing["b"].values()) == {"no samples"}
    assert res.mean["aupro"] is None and res.mean_counts["aupro"] == 0


def test_both_aupros_get_the_fpr_limit():
    samples = [s for s in make_samples(5) if s["cat"] == 0]
    ev = AnomalyEvaluator(["bottle"], fpr_limit=0.2)
    feed(ev, samples)
    res = ev.compute()
    maps = np.stack([s["map"].numpy() for s in samples])
    masks = np.stack([s["mask"].numpy() for s in samples])
    assert res.per_category["bottle"]["aupro_cflow"] == legacy_cflow_aupro(maps, masks, 0.2)
    assert res.per_category["bottle"]["aupro"] == pytest.approx(aupro(maps, masks, 0.2), abs=1e-12)
    assert res.to_dict()["fpr_limit"] == 0.2 and "aupro_cflow" in res.format_table()


def test_b1hw_maps_reset_and_repeated_compute():
    samples = [s for s in make_samples(6) if s["cat"] == 1]
    ev = AnomalyEvaluator(CATEGORIES)
    ev.update(
        torch.tensor([1] * len(samples)),
        torch.tensor([s["sid"] for s in samples]),
        torch.tensor([s["score"] for s in samples]),
        torch.tensor([s["label"] for s in samples]),
        torch.stack([s["map"] for s in samples])[:, None],
        torch.stack([s["mask"] for s in samples])[:, None],
    )
    first = ev.compute()
    assert ev.compute().per_category == first.per_category
    again = AnomalyEvaluator(CATEGORIES)
    for s in samples:  # calling the metric accumulates like update
        out = again(
            torch.tensor([1]),
            torch.tensor([s["sid"]]),
            torch.tensor([s["score"]]),
            torch.tensor([s["label"]]),
            s["map"][None],
            s["mask"][None],
        )
        assert out is None
    assert again.compute().per_category == first.per_category
    assert first.per_category["cable"]["aupro"] is not None
    ev.reset()
    ev.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([0.5]), torch.tensor([1]))
    assert ev.compute().num_images["cable"] == 0


def test_merge_results():
    a = EvaluationResult.from_categories(
        {"x": {"image_auroc": 0.5}}, {"x": {"aupro": "no masks"}}, num_images={"x": 3}
    )
    b = EvaluationResult.from_categories({"y": {"image_auroc": 1.0, "aupro": 0.7}}, {}, num_images={"y": 2})
    m = EvaluationResult.merge([a, b])
    assert m.categories == ["x", "y"]
    assert m.mean["image_auroc"] == 0.75 and m.mean["aupro"] == 0.7 and m.mean_counts["aupro"] == 1
    assert m.missing["x"]["aupro"] == "no masks" and m.to_rows()[-1]["num_images"] == 5
    with pytest.raises(ValueError, match="more than one"):
        EvaluationResult.merge([a, a])


def test_sync_gives_empty_states_their_own_dtype():
    """A rank without pixel data must not send float32 empties for uint8/int64/float16 states."""
    ev = AnomalyEvaluator(["a"], pixel_score_dtype=torch.float16)
    ev.update(torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([0.2, 0.9]), torch.tensor([0, 1]))
    seen = {}

    def fake_gather(t, group=None):  # a 2-process world whose other rank sent the same
        seen[t.dtype] = seen.get(t.dtype, 0) + 1
        return [t, t]

    ev._sync_dist(dist_sync_fn=fake_gather)
    assert ev.pix_scores.dtype == torch.float16 and ev.pix_masks.dtype == torch.uint8
    assert ev.pix_sample.dtype == torch.int64 and ev.pix_scores.numel() == 0
    res = ev.compute()
    assert res.duplicates_dropped == 2 and res.per_category["a"]["image_auroc"] == 1.0


def test_known_category_sizes_free_each_category_once_complete():
    """With samples_per_category, a category's pixels are scored and freed as soon as its last sample
    arrives: a loader in category order holds one category at a time, with the same numbers."""
    samples = make_samples(7)
    ref = AnomalyEvaluator(CATEGORIES)
    feed(ref, samples)
    expected = ref.compute()
    sizes = [sum(s["cat"] == ci for s in samples) for ci in range(len(CATEGORIES))]
    ev = AnomalyEvaluator(CATEGORIES, samples_per_category=sizes)
    held = []
    for s in sorted(samples, key=lambda s: s["cat"]):
        update_one(ev, s)
        held.append({int(c[0]) for c in ev.pix_category})
    assert max(len(h) for h in held) == 1 and len(ev.pix_scores) == 0
    got = ev.compute()
    assert got.per_category == expected.per_category and got.missing == expected.missing
    assert got.notes == expected.notes
    for name, curves in ref.curves().items():  # the curves were kept when the pixels were freed
        early = ev.curves()[name]
        assert early.reasons == curves.reasons
        for a, b in (
            (early.pro, curves.pro),
            (early.pixel and early.pixel.f1, curves.pixel and curves.pixel.f1),
        ):
            assert (a is None and b is None) or np.array_equal(a, b), name
    first = samples[0]
    duplicate = (torch.tensor([0]), torch.tensor([first["sid"]]), torch.tensor([0.5]), torch.tensor([0]))
    ev.update(*duplicate, first["map"][None], first["mask"][None])  # padding duplicate: ignored
    assert len(ev.pix_scores) == 0 and ev.compute().per_category == expected.per_category
    with pytest.raises(ValueError, match="samples_per_category is wrong"):
        ev.update(torch.tensor([0]), torch.tensor([999]), torch.tensor([0.5]), torch.tensor([0]))
    ev.reset()
    feed(ev, [s for s in samples if s["cat"] == 1])
    assert ev.compute().per_category["cable"] == expected.per_category["cable"]
    with pytest.raises(ValueError, match="entries"):
        AnomalyEvaluator(CATEGORIES, samples_per_category=[1])
