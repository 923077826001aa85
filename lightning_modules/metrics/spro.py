"""sPRO, the saturated per-region overlap of MVTec LOCO AD (Bergmann et al., IJCV 2022), exact.

Each ground-truth *region* (one PNG of a mask folder, :mod:`datamodules.regions`) has a saturation area
``a``: at a threshold ``t`` its sPRO is ``min(TP_t / a, 1)``, ``TP_t`` its pixels scoring ``> t``. The curve
is the mean sPRO over all regions of all images against the false-positive rate over the pixels that lie in
no region, and AU-sPRO its area up to an FPR limit divided by the limit, as MVTec's LOCO evaluation code
computes it (``get_spros_for_thresholds``, ``get_fp_tn_areas_per_image``, ``get_auc_for_max_fpr``).

MVTec's code samples the thresholds adaptively (``curve_max_distance``); here every distinct score is a
threshold, which is the limit its refinement approaches. The curve is the same weighted step curve as the
PRO curve, so the exact AUPRO code computes it (:func:`~.pro._aupro_from_split`): sorted by score, the i-th
pixel of a region adds ``(min(i, a) - min(i - 1, a)) / a`` to that region's sPRO -- ties only ever count
together, so which tied pixel is "first" does not matter -- and each region weighs ``1 / #regions``. A region
with a saturation area of 0 (a relative threshold times fewer pixels than one) counts as found with its
first pixel, the limit of MVTec's ``tp / 0`` (which is NaN before any of its pixels is found).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_modules.metrics._arrays import MapLike, UndefinedMetricError, _NumpyOps
from lightning_modules.metrics._split import _PixelSplit
from lightning_modules.metrics.pro import _aupro_from_split, _check_fpr_limit

#: The integration limit of the AU-sPRO that MVTec LOCO AD's paper reports (its code computes 0.01, 0.05,
#: 0.1, 0.3 and 1.0).
SPRO_FPR_LIMIT = 0.05


def _numpy(x: MapLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def region_weights(scores: np.ndarray, saturation: float) -> np.ndarray:
    """Each pixel's share of its region's sPRO (see the module docstring), in the order of ``scores``."""
    n = scores.shape[0]
    order = np.argsort(-scores, kind="stable")
    a = float(saturation)
    rank = np.arange(1, n + 1, dtype=np.float64)
    # a > 0: the share of the saturation area this pixel fills; a == 0: the first pixel finds the region
    step = (np.minimum(rank, a) - np.minimum(rank - 1, a)) / a if a > 0 else (rank == 1).astype(np.float64)
    weights = np.empty(n, dtype=np.float64)
    weights[order] = step
    return weights


def spro_from_parts(
    anomaly_free: np.ndarray,
    regions: Sequence[tuple[np.ndarray, float]],
    fpr_limit: float = SPRO_FPR_LIMIT,
) -> float:
    """AU-sPRO from the scores of the pixels in no region and, per region, its pixels' scores and its
    saturation area (the form the evaluator keeps). Raises :class:`UndefinedMetricError` without regions or
    without anomaly-free pixels."""
    fpr_limit = _check_fpr_limit(fpr_limit)
    regions = [(np.asarray(s).reshape(-1), a) for s, a in regions if np.asarray(s).size]
    if not regions:
        raise UndefinedMetricError("no anomalous regions in the ground truth")
    dtype = (
        np.float64
        if any(s.dtype == np.float64 for s, _ in regions) or anomaly_free.dtype == np.float64
        else np.float32
    )
    neg = np.asarray(anomaly_free, dtype=dtype).reshape(-1).copy()
    if neg.size == 0:
        raise UndefinedMetricError("no anomaly-free pixels in the ground truth")
    if np.isnan(neg).any() or any(np.isnan(s).any() for s, _ in regions):
        raise ValueError("anomaly maps contain NaN")
    pos = np.concatenate([s.astype(dtype) for s, _ in regions])
    weight = np.concatenate([region_weights(s, a) for s, a in regions])
    order = np.argsort(pos, kind="stable")
    split = _PixelSplit(
        ops=_NumpyOps(),
        neg=neg,
        pos=pos[order],
        pos_weight=weight[order],
        pos_region=None,
        region_sizes=None,
        n_regions=len(regions),
        pos_sorted=True,
    )
    return _aupro_from_split(split, fpr_limit)


def spro(
    maps: Sequence[MapLike],
    regions: Sequence[Sequence[MapLike]],
    saturations: Sequence[Sequence[float]],
    fpr_limit: float = SPRO_FPR_LIMIT,
) -> float:
    """AU-sPRO of anomaly maps (H, W) against their regions: per image a sequence of (H, W) bool masks (empty
    for a normal image) and their saturation areas in pixels. Pixels in no region of their image are the
    anomaly-free ones."""
    if not (len(maps) == len(regions) == len(saturations)):
        raise ValueError(
            f"{len(maps)} maps, {len(regions)} region lists and {len(saturations)} saturation lists"
        )
    anomaly_free, parts = [], []
    for amap, masks, areas in zip(maps, regions, saturations, strict=True):
        m = _numpy(amap)
        if len(masks) != len(areas):
            raise ValueError(f"{len(masks)} regions but {len(areas)} saturation areas")
        covered = np.zeros(m.shape, dtype=bool)
        for mask, area in zip(masks, areas, strict=True):
            g = _numpy(mask).astype(bool)
            if g.shape != m.shape:
                raise ValueError(f"a region has shape {g.shape} but its map has shape {m.shape}")
            covered |= g
            parts.append((m[g], float(area)))
        anomaly_free.append(m[~covered])
    return spro_from_parts(np.concatenate(anomaly_free) if anomaly_free else np.zeros(0), parts, fpr_limit)


def region_scores(amap: Tensor, regions: Tensor, saturation: Tensor) -> list[tuple[int, Tensor, float]]:
    """``(region index, its pixels' scores, saturation)`` of one sample's regions (R, H, W) that have pixels
    at this resolution (padding and regions that vanished in the resize have none)."""
    out = []
    for k in range(regions.shape[0]):
        g = regions[k].to(torch.bool)
        if bool(g.any()):
            out.append((k, amap[g.to(amap.device)], float(saturation[k])))
    return out
