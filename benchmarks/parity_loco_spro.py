"""Parity of zsad's AU-sPRO with MVTec's LOCO evaluation code, on generated maps and regions.

    python benchmarks/parity_loco_spro.py --official DIR [--write-fixture]

``DIR`` holds MVTec's ``mvtec_loco_ad_evaluation`` code: its ``src/`` (``image.py``, ``metrics.py``,
``aggregation.py``, ``util.py``), or a copy vendored as ``metric/mvtec_loco/src`` (M-3LAB/open-iad), which
is what this was run with (the official archive is a download from mvtec.com, not a repository). Their
code is run here, never copied into zsad; ``--write-fixture`` stores its outputs with the inputs in
``tests/fixtures/parity/loco_spro.npz`` for tests/lightning_modules/metrics/test_metrics_spro.py.

MVTec's ``MetricsAggregator`` picks thresholds adaptively (``curve_max_distance``); zsad uses every distinct
score. So the official functions are called twice: with every distinct score as a threshold (what zsad must
equal to rounding) and through ``MetricsAggregator.run`` with the evaluation script's default distance (how
far the published procedure is from the exact curve on these inputs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.metrics.spro import spro  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity" / "loco_spro.npz"
MAX_FPRS = (0.01, 0.05, 0.1, 0.3, 1.0)  # evaluate_experiment.py's MAX_FPRS
CURVE_MAX_DISTANCE = 0.01  # evaluate_experiment.py's default
SEED = 0
SHAPE = (30, 40)
# pixel value -> (name, threshold, relative): a relative rule, an absolute one smaller than most regions,
# one larger than some (capped at the area), as in LOCO's defects_config.json
DEFECTS = [
    {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 1, "saturation_threshold": 20, "relative_saturation": False},
    {"defect_name": "extra", "pixel_value": 2, "saturation_threshold": 150, "relative_saturation": False},
    {"defect_name": "whole", "pixel_value": 3, "saturation_threshold": 1.0, "relative_saturation": True},
]


def make_inputs(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps (N, H, W) float32 quantised to 1/64 (many ties), region masks (N, R, H, W) bool and their
    pixel values (N, R), 0 = no region; images 0-2 are good, the others have 1-3 regions, some overlapping."""
    rng = np.random.default_rng(seed)
    n, r = 9, 3
    maps = np.round(rng.random((n, *SHAPE)) * 64) / 64
    regions = np.zeros((n, r, *SHAPE), dtype=bool)
    values = np.zeros((n, r), dtype=np.int64)
    for i in range(3, n):
        for k in range(int(rng.integers(1, r + 1))):
            top, left = int(rng.integers(0, SHAPE[0] - 8)), int(rng.integers(0, SHAPE[1] - 10))
            h, w = int(rng.integers(2, 9)), int(rng.integers(2, 11))
            regions[i, k, top : top + h, left : left + w] = True
            values[i, k] = DEFECTS[int(rng.integers(0, len(DEFECTS)))]["pixel_value"]
            maps[i][regions[i, k]] += 0.4 * rng.random()  # anomalies score higher, partly
    return maps.astype(np.float32), regions, values


def _official_modules(official: Path):  # noqa: ANN202 - their module objects
    for base, package in ((official, "src"), (official, "metric.mvtec_loco.src")):
        if (base / Path(*package.split("."))).is_dir():
            sys.path.insert(0, str(base))
            image = __import__(f"{package}.image", fromlist=["x"])
            metrics = __import__(f"{package}.metrics", fromlist=["x"])
            aggregation = __import__(f"{package}.aggregation", fromlist=["x"])
            util = __import__(f"{package}.util", fromlist=["x"])
            return image, metrics, aggregation, util
    raise SystemExit(f"--official {official}: neither src/ nor metric/mvtec_loco/src/ found")


def official_results(official: Path, maps: np.ndarray, regions: np.ndarray, values: np.ndarray) -> dict:
    image, metrics, aggregation, util = _official_modules(official)
    config = image.DefectsConfig.create_from_list(DEFECTS)
    gt_maps, anomaly_maps = [], []
    for amap, masks, vals in zip(maps, regions, values, strict=True):
        channels = [
            image.GroundTruthChannel.create_from_integer_array(mask.astype(np.uint8) * int(v), config)
            for mask, v in zip(masks, vals, strict=True)
            if v
        ]
        gt_maps.append(image.GroundTruthMap(channels) if channels else None)
        anomaly_maps.append(image.AnomalyMap(amap))
    # every distinct score as a threshold (binary map: score > t), descending, ending below the minimum
    distinct = np.unique(maps)[::-1]
    thresholds = np.concatenate([distinct, [distinct[-1] - 1.0]]).astype(np.float64)
    spros = metrics.get_spros_of_defects_of_images(gt_maps, anomaly_maps, thresholds)
    fp, tn = metrics.get_fp_tn_areas_per_image(gt_maps, anomaly_maps, thresholds)
    exact = aggregation.ThresholdMetrics(gt_maps, anomaly_maps, thresholds, spros, fp, tn)
    fprs, mean_spros = exact.get_fp_rates(), exact.get_mean_spros()
    exact_aucs = [util.get_auc_for_max_fpr(fprs, mean_spros, m, scale_to_one=True) for m in MAX_FPRS]
    adaptive = aggregation.MetricsAggregator(gt_maps, anomaly_maps).run(curve_max_distance=CURVE_MAX_DISTANCE)
    adaptive_aucs = [
        util.get_auc_for_max_fpr(adaptive.get_fp_rates(), adaptive.get_mean_spros(), m, scale_to_one=True)
        for m in MAX_FPRS
    ]
    return {
        "exact_auc": np.array(exact_aucs),
        "adaptive_auc": np.array(adaptive_aucs),
        "adaptive_thresholds": np.array(len(adaptive.anomaly_thresholds)),
    }


def zsad_aucs(maps: np.ndarray, regions: np.ndarray, values: np.ndarray) -> np.ndarray:
    from datamodules.regions import DefectRule

    rules = {
        d["pixel_value"]: DefectRule(
            d["defect_name"], d["pixel_value"], d["saturation_threshold"], d["relative_saturation"]
        )
        for d in DEFECTS
    }
    masks = [[m for m, v in zip(ms, vs, strict=True) if v] for ms, vs in zip(regions, values, strict=True)]
    areas = [
        [rules[int(v)].saturation_area(int(m.sum())) for m, v in zip(ms, vs, strict=True) if v]
        for ms, vs in zip(regions, values, strict=True)
    ]
    return np.array([spro(list(maps), masks, areas, fpr_limit=m) for m in MAX_FPRS])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--official", type=Path, required=True, help="MVTec's LOCO evaluation code (see above)"
    )
    parser.add_argument("--write-fixture", action="store_true", help=f"write {FIXTURE}")
    args = parser.parse_args()
    maps, regions, values = make_inputs()
    official = official_results(args.official, maps, regions, values)
    ours = zsad_aucs(maps, regions, values)
    for m, o, e, a in zip(MAX_FPRS, ours, official["exact_auc"], official["adaptive_auc"], strict=True):
        print(
            f"FPR limit {m:<4}: zsad {o:.15f}  official, every score {e:.15f} (|d| {abs(o - e):.1e})  "
            f"official adaptive {a:.6f} (|d| {abs(o - a):.1e})"
        )
    print(f"official adaptive run: {int(official['adaptive_thresholds'])} thresholds")
    if args.write_fixture:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            FIXTURE,
            maps=maps,
            regions=regions,
            values=values,
            defects=np.array(json.dumps(DEFECTS)),
            max_fprs=np.array(MAX_FPRS),
            **official,
        )
        print(f"wrote {FIXTURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
