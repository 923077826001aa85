"""The pixel split: scores separated once into anomaly-free (``neg``) and anomalous (``pos``) pixels, with
the anomalous regions' weights; the only form the exact pixel metrics need (no index array of all pixels)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from lightning_modules.metrics._arrays import (
    MapLike,
    MapsLike,
    UndefinedMetricError,
    _as_2d_list,
    _binarise,
    _has_nan,
    _in_threads,
    _is_float,
    _is_float64,
    _NumpyOps,
    _pick_ops,
    _to_backend,
    _TorchOps,
)

#: 8-connectivity, as in the MVTec AD evaluation code (``scipy.ndimage.label`` with a 3x3 structure).
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)


@dataclass
class _PixelSplit:
    """Pixel scores split by ground truth, the only form every pixel metric needs.

    ``neg``/``pos`` are owned buffers (float32, or float64 when any map is float64) that the metrics may
    reorder in place; ``pos_weight`` is 1/|region| of each anomalous pixel's 8-connected region.
    """

    ops: _NumpyOps | _TorchOps
    neg: Any
    pos: Any
    pos_weight: Any | None
    pos_region: Any | None
    region_sizes: np.ndarray | None
    n_regions: int
    neg_sorted: bool = False
    pos_sorted: bool = False
    #: Anomaly-free pixels left out of ``neg`` because they score below every threshold AUPRO needs.
    n_neg_below: int = 0

    @property
    def n_neg(self) -> int:
        return int(self.neg.shape[0]) + self.n_neg_below

    @property
    def n_pos(self) -> int:
        return int(self.pos.shape[0])


def _paired_maps(maps: MapsLike, masks: MapsLike) -> tuple[list[MapLike], list[MapLike]]:
    """Maps and masks as equally long lists of 2-D arrays of matching shapes."""
    map_list = _as_2d_list(maps, "anomaly maps")
    mask_list = _as_2d_list(masks, "masks")
    if len(map_list) != len(mask_list):
        raise ValueError(f"{len(map_list)} anomaly maps but {len(mask_list)} masks")
    if not map_list:
        raise UndefinedMetricError("no anomaly maps")
    for i, (m, g) in enumerate(zip(map_list, mask_list, strict=True)):
        if tuple(m.shape) != tuple(g.shape):
            raise ValueError(f"map {i} has shape {tuple(m.shape)} but its mask has shape {tuple(g.shape)}")
    return map_list, mask_list


def _region_weights(g: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a mask with anomalous pixels: 1/|region| of each of them (row-major, like ``m[g]``), region sizes
    and the 0-based region of each pixel."""
    labels, n_regions = _label_regions((g.cpu().numpy() if isinstance(g, Tensor) else g).reshape(shape))
    size = np.bincount(labels, minlength=n_regions + 1)[1:]
    return 1.0 / size[labels - 1], size, labels - 1


def _label_regions(g: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of a 2-D bool mask, labelled on the mask's bounding box (much faster for small
    defects); returns the label of each True pixel in row-major order (like ``m[g]``) and the count."""
    rows = np.flatnonzero(g.any(axis=1))
    cols = np.flatnonzero(g.any(axis=0))
    crop = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    labels, count = ndimage.label(crop, structure=_STRUCTURE_8)
    return labels[crop], int(count)


#: AUPRO needs only the anomaly-free scores above its threshold t* (~fpr_limit of them). On inputs this
#: large, a sample estimates a floor below t* so that only the pixels above it are copied and selected.
_PREFILTER_MIN_PIXELS = 1 << 20
_PREFILTER_SAMPLE = 1 << 18
#: Extra fraction of anomaly-free pixels kept below the sampled quantile: the quantile of 2^18 pixels that
#: behave like a random sample is off by more than 0.02 with negligible probability, and a floor that
#: keeps too few pixels (a sample that misled, e.g. by aligning with a pattern) only costs a second split.
_PREFILTER_MARGIN = 0.02


def _normal_score_floor(
    pairs: list[tuple[Any, Any]], fpr_limit: float, ops: _NumpyOps | _TorchOps
) -> float | None:
    """A score that (very likely) lies below the AUPRO threshold t*, estimated from a strided sample of the
    anomaly-free pixels; None where filtering would not pay off. Callers verify that enough pixels are kept."""
    total = sum(int(m.shape[0]) for m, _ in pairs)
    level = 1.0 - fpr_limit - _PREFILTER_MARGIN
    if total < _PREFILTER_MIN_PIXELS or level < 0.1:
        return None
    step = max(1, total // _PREFILTER_SAMPLE)
    sample = [m[::step][~g[::step]] for m, g in pairs]
    sample = np.concatenate(sample) if isinstance(ops, _NumpyOps) else torch.cat(sample)
    if sample.shape[0] < _PREFILTER_SAMPLE // 8:  # mostly anomalous pixels: not worth it
        return None
    kth = min(int(level * sample.shape[0]), sample.shape[0] - 1)
    if isinstance(ops, _NumpyOps):
        floor = float(np.partition(sample, kth)[kth])
    else:
        floor = float(torch.kthvalue(sample, kth + 1).values)
    return None if math.isnan(floor) else floor


def _anomalous_pixels(
    pairs: list[tuple[Any, Any]],
    shapes: list[tuple[int, ...]],
    ops: _NumpyOps | _TorchOps,
    work: str,
    regions: bool,
    region_ids: bool,
) -> tuple[Any, Any | None, Any | None, list[np.ndarray]]:
    """The anomalous pixels sorted by score, with 1/|region| of each one's 8-connected region and its global
    region id where asked for, and every image's region sizes."""
    pos_at = np.cumsum([0, *(ops.count_true(g) for _, g in pairs)]).tolist()
    pos = ops.empty(pos_at[-1], work)
    weights = np.empty(pos_at[-1], dtype=np.float64) if regions else None
    region_of = np.empty(pos_at[-1], dtype=np.int64) if region_ids else None
    sizes: list[np.ndarray] = []
    n_regions = 0
    for i, (m, g) in enumerate(pairs):
        if pos_at[i + 1] == pos_at[i]:
            continue
        at = slice(pos_at[i], pos_at[i + 1])
        pos[at] = m[g]
        if weights is not None:
            weights[at], size, region = _region_weights(g, shapes[i])
            if region_of is not None:
                region_of[at] = region + n_regions
            sizes.append(size)
            n_regions += len(size)
    if pos.shape[0] and math.isnan(float(pos.max())):  # NaN propagates through max
        raise ValueError("anomaly maps contain NaN (at anomalous pixels)")
    extra = [ops.from_numpy(a) for a in (weights, region_of) if a is not None]
    pos, *extra = ops.sort_with(pos, *extra)
    weight_sorted = extra.pop(0) if weights is not None else None
    region_sorted = extra.pop(0) if region_of is not None else None
    return pos, weight_sorted, region_sorted, sizes


def _anomaly_free_pixels(
    pairs: list[tuple[Any, Any]], ops: _NumpyOps | _TorchOps, work: str, floor: float | None, fpr_limit: float
) -> Any:
    """The anomaly-free scores, image after image; with a floor only those not below it, unless that keeps
    fewer than AUPRO at ``fpr_limit`` needs (the sample behind the floor misled: then every one is kept)."""
    n_each = [int(m.shape[0]) - ops.count_true(g) for m, g in pairs]
    keep: list[Any] | None = None
    if floor is not None:
        # ~(m < floor), not m >= floor: NaN scores are kept, so that they are reported, not dropped.
        keep = [~((m < floor) | g) for m, g in pairs]
        n_kept = [ops.count_true(sel) for sel in keep]
        if sum(n_kept) >= _normals_needed(sum(n_each), fpr_limit):
            n_each = n_kept
        else:
            keep = None
    at = np.cumsum([0, *n_each]).tolist()
    neg = ops.empty(at[-1], work)
    for i, (m, g) in enumerate(pairs):
        if keep is not None:
            neg[at[i] : at[i + 1]] = m[keep[i]]
        else:
            neg[at[i] : at[i + 1]] = m if n_each[i] == m.shape[0] else m[~g]
    return neg


def _split_pixels(
    maps: MapsLike,
    masks: MapsLike,
    *,
    regions: bool = True,
    region_ids: bool = False,
    aupro_fpr_limit: float | None = None,
) -> _PixelSplit:
    """Build the split image by image, so that no full-size temporary (bool, int64 or float64) is needed.
    On the CPU the anomaly-free and the anomalous pixels are gathered on two threads (numpy releases the GIL
    in the comparisons and copies; the region labelling runs beside them).

    With ``aupro_fpr_limit`` the split serves AUPRO only: anomaly-free pixels that score below every
    threshold AUPRO needs may be left out (counted in ``n_neg_below``), which saves most of the copying
    and sorting for the usual limit of 0.3.
    """
    map_list, mask_list = _paired_maps(maps, masks)
    ops = _pick_ops(map_list)
    pairs = [
        (_to_backend(m, ops).reshape(-1), _binarise(_to_backend(g, ops)).reshape(-1))
        for m, g in zip(map_list, mask_list, strict=True)
    ]
    shapes = [tuple(g.shape) for g in mask_list]
    work = "float64" if any(_is_float64(m) or not _is_float(m) for m, _ in pairs) else "float32"
    floor = None if aupro_fpr_limit is None else _normal_score_floor(pairs, aupro_fpr_limit, ops)
    tasks = [
        lambda: _anomalous_pixels(pairs, shapes, ops, work, regions, region_ids),
        lambda: _anomaly_free_pixels(pairs, ops, work, floor, aupro_fpr_limit or 1.0),
    ]
    # Tensors stay on the calling thread (its CUDA device and stream); numpy halves run side by side.
    run = _in_threads if isinstance(ops, _NumpyOps) else lambda fns: [fn() for fn in fns]
    (pos, weight, region, sizes), neg = run(tasks)
    n_total = sum(int(m.shape[0]) for m, _ in pairs)
    # NaNs among the anomaly-free scores are caught where they are sorted or selected (NaN sorts last).
    return _PixelSplit(
        ops=ops,
        neg=neg,
        pos=pos,
        pos_weight=weight,
        pos_region=region,
        region_sizes=np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64),
        n_regions=sum(len(s) for s in sizes),
        pos_sorted=True,
        n_neg_below=n_total - int(pos.shape[0]) - int(neg.shape[0]),
    )


def _check_neg_nan(sp: _PixelSplit, largest: Any) -> None:
    if math.isnan(float(largest)):
        raise ValueError("anomaly maps contain NaN (at anomaly-free pixels)")


def _split_scores(scores: MapLike, labels: MapLike) -> _PixelSplit:
    """Image-level (or any flat) scores and 0/1 labels as a split without regions."""
    s = scores if isinstance(scores, Tensor | np.ndarray) else np.asarray(scores)
    y = labels if isinstance(labels, Tensor | np.ndarray) else np.asarray(labels)
    if tuple(s.shape) != tuple(y.shape):
        raise ValueError(f"scores have shape {tuple(s.shape)} but labels have shape {tuple(y.shape)}")
    ops = _pick_ops([s])
    s, y = _to_backend(s, ops).reshape(-1), _to_backend(y, ops).reshape(-1)
    if _has_nan(s):
        raise ValueError("scores contain NaN")
    if not (y.dtype == torch.bool if isinstance(y, Tensor) else y.dtype == np.bool_):
        if bool(((y != 0) & (y != 1)).any()):
            raise ValueError("labels must be 0/1 or bool")
        y = y != 0
    work = "float64" if _is_float64(s) or not _is_float(s) else "float32"
    n_pos = int(y.sum())
    neg, pos = ops.empty(int(s.shape[0]) - n_pos, work), ops.empty(n_pos, work)
    neg[:] = s[~y]
    pos[:] = s[y]
    return _PixelSplit(ops, neg, pos, None, None, None, 0)


def _normals_needed(n_ok: int, fpr_limit: float) -> int:
    """Smallest k with k / n_ok > fpr_limit (capped at n_ok): the curve is needed down to that normal pixel."""
    if fpr_limit >= 1.0:
        return n_ok
    k = min(n_ok, math.floor(fpr_limit * n_ok) + 1)
    while k > 1 and (k - 1) / n_ok > fpr_limit:
        k -= 1
    while k < n_ok and k / n_ok <= fpr_limit:
        k += 1
    return k


def _sort_split(sp: _PixelSplit) -> None:
    if sp.n_neg_below:
        raise RuntimeError("this split holds only the anomaly-free pixels AUPRO needs; split again in full")
    ops = sp.ops
    if not sp.neg_sorted:
        sp.neg = ops.sort_(sp.neg)
        sp.neg_sorted = True
        if sp.n_neg:
            _check_neg_nan(sp, sp.neg[-1])
    if not sp.pos_sorted:  # image-level splits; pixel splits come sorted with their weights (_split_pixels)
        sp.pos = ops.sort_(sp.pos)
        sp.pos_sorted = True
