"""Exact anomaly-detection metrics as plain functions (definitions: docs/metrics.md).

Everything here is exact with ties (every distinct score is a threshold) and avoids the copies that make
naive implementations run out of memory on 10^8-10^9 pixels:

- scores are split once into anomaly-free (``neg``) and anomalous (``pos``) pixels; AUROC/AP/F1 need only
  the two *value-sorted* arrays plus ``searchsorted`` (no argsort, no int64 index array of all pixels);
- AUPRO sorts only the anomaly-free pixels above the FPR limit; the area is then one float64 dot product
  over the anomalous pixels (see ``_aupro_from_split``). On large inputs a sampled floor lets the split copy
  only those pixels (``_normal_score_floor``); a floor that keeps too few is detected and the split redone;
- on the CPU, work that numpy runs without the GIL (the split's two halves, large sorts and searches) is
  spread over ``torch.get_num_threads()`` threads;
- 16-bit scores (float16, the evaluator's default storage, or bfloat16) take one of 65,536 bit patterns, so
  per-pattern counts (``np.bincount``, O(P)) replace the split and the sort (``_histogram_pixels``).

CPU inputs run on numpy (its SIMD sort/partition are ~10x faster than ``torch.sort`` on CPU); CUDA tensors
stay on their device and use torch. Undefined metrics raise :class:`UndefinedMetricError` with the reason.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = [
    "CFLOW_THRESHOLDS",
    "PIXEL_METRICS",
    "UndefinedMetricError",
    "aupro",
    "binary_auroc",
    "binary_average_precision",
    "f1_max",
    "legacy_cflow_aupro",
    "pixel_metrics",
    "pro_curve",
    "trapezoid_area",
]

#: The pixel metrics :func:`pixel_metrics` computes: exact AUPRO and the published cflow-style AUPRO side by side.
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro", "aupro_cflow")
#: Thresholds of the cflow-style AUPRO (the AnomalyCLIP/VAND evaluation code).
CFLOW_THRESHOLDS = 200
#: 8-connectivity, as in the MVTec AD evaluation code (``scipy.ndimage.label`` with a 3x3 structure).
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)

MapLike = Tensor | np.ndarray
MapsLike = MapLike | Sequence[MapLike]


class UndefinedMetricError(ValueError):
    """The metric has no value for these inputs (e.g. only one label present); the message says why."""


#: A CPU sort or search uses one thread per this many values (at most torch.get_num_threads(), at most 8).
_VALUES_PER_THREAD = 1 << 21


def _thread_count(n: int) -> int:
    """How many threads a CPU sort of n values (or a search of n / 16 needles) is split across."""
    return max(1, min(torch.get_num_threads(), 8, n // _VALUES_PER_THREAD))


def _in_threads(tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run the tasks concurrently (the first on the calling thread) and return their results in order.
    Worth it for numpy work that releases the GIL: sorting, comparisons, boolean indexing, searchsorted."""
    if len(tasks) == 1:
        return [tasks[0]()]
    with ThreadPoolExecutor(len(tasks) - 1) as pool:
        futures = [pool.submit(task) for task in tasks[1:]]
        first = tasks[0]()
        return [first, *(f.result() for f in futures)]


# --------------------------------------------------------------------------------------------------------
# Backends: the few operations whose numpy and torch spellings differ. Everything else (slicing, boolean
# indexing, comparisons) is written once and works on both array types.
# --------------------------------------------------------------------------------------------------------
class _NumpyOps:
    """CPU backend. Arrays are numpy (torch CPU tensors are viewed, not copied)."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def empty(self, n: int, dtype: str) -> np.ndarray:
        return np.empty(n, dtype=np.dtype(dtype))

    def from_numpy(self, a: np.ndarray) -> np.ndarray:
        return a

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def sort_(self, x: np.ndarray) -> np.ndarray:
        """In place, values only (no index array); large arrays are cut by value and sorted on
        ``torch.get_num_threads()`` threads (numpy releases the GIL while sorting)."""
        parts = _thread_count(x.shape[0])
        if parts < 2:
            x.sort()
            return x
        n = x.shape[0]
        cuts = [n * i // parts for i in range(1, parts)]
        x.partition(cuts)
        bounds = [0, *cuts, n]
        _in_threads([functools.partial(np.ndarray.sort, x[a:b]) for a, b in itertools.pairwise(bounds)])
        return x

    def top_k_sorted_(self, x: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        """Ascending k largest values (x is reordered in place) and how many values left out tie with the smallest."""
        n = x.shape[0]
        if k >= n:
            return self.sort_(x), 0
        x.partition(n - k)
        top = self.sort_(x[n - k :])
        rest = x[: n - k]
        # Everything left of the partition is <= top[0]; count ties only if there are any (max: no temporary).
        ties = int(np.count_nonzero(rest == top[0])) if rest.max() == top[0] else 0
        return top, ties

    def sort_with(self, x: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
        order = _argsort_float32(x) if x.dtype == np.float32 and x.shape[0] < 2**32 else np.argsort(x)
        return (x[order],) + tuple(o[order] for o in others)

    def unique_counts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values and counts of an ascending array."""
        n = x.shape[0]
        if n == 0:
            return x[:0], np.zeros(0, dtype=np.int64)
        flags = np.empty(n, dtype=bool)
        flags[0] = True
        np.not_equal(x[1:], x[:-1], out=flags[1:])
        starts = np.flatnonzero(flags)
        counts = np.diff(np.append(starts, n)).astype(np.int64, copy=False)
        return x[starts], counts

    def searchsorted(
        self, seq: np.ndarray, v: np.ndarray, right: bool, sorted_needles: bool = False
    ) -> np.ndarray:
        side = "right" if right else "left"
        block = 1 << 15
        if not sorted_needles or seq.shape[0] <= 4 * block or v.shape[0] < 1024:
            return np.searchsorted(seq, v, side=side).astype(np.int64, copy=False)
        # Ascending needles into a large haystack: search one cache-sized block at a time (2-4x faster than
        # binary searches that miss the cache at every level). Needle p goes to the last block whose first
        # value is <= p (right) or < p (left): everything before that block counts, nothing after it does.
        starts = np.arange(0, seq.shape[0], block)
        cut = np.searchsorted(v, seq[starts], side="left" if right else "right")
        out = np.zeros(v.shape[0], dtype=np.int64)
        ends = np.append(cut[1:], v.shape[0])
        jobs = [
            (a, lo, hi)
            for a, lo, hi in zip(starts.tolist(), cut.tolist(), ends.tolist(), strict=True)
            if hi > lo
        ]

        def search(some: list[tuple[int, int, int]]) -> None:
            for start, lo, hi in some:
                out[lo:hi] = start + np.searchsorted(seq[start : start + block], v[lo:hi], side=side)

        threads = _thread_count(16 * v.shape[0])  # numpy releases the GIL while searching
        _in_threads([functools.partial(search, jobs[i::threads]) for i in range(threads)])
        return out

    def bincount(self, idx: np.ndarray, weights: np.ndarray | None, n: int) -> np.ndarray:
        return np.bincount(idx, weights=weights, minlength=n)

    def count_true(self, x: np.ndarray) -> int:
        return int(np.count_nonzero(x))

    def count_greater(self, x: np.ndarray, t: Any) -> int:
        return int(np.count_nonzero(x > t))

    def scalar(self, value: float, like: np.ndarray) -> Any:
        return like.dtype.type(value)


def _argsort_float32(x: np.ndarray) -> np.ndarray:
    """``np.argsort`` for float32 (ties in index order), ~2x faster: each value becomes an order-preserving
    uint32 key (flip all bits of negatives, the sign bit of the rest), packed above its index into one
    uint64 that numpy's SIMD sort orders. -0.0 sorts just before +0.0; they compare equal either way."""
    bits = x.view(np.uint32)
    key = bits ^ np.where(bits >> 31, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    packed = (key.astype(np.uint64) << np.uint64(32)) | np.arange(x.shape[0], dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64(0xFFFFFFFF)).astype(np.intp)


class _TorchOps:
    """Accelerator backend: stays on the tensors' device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    _DTYPES = {
        "float16": torch.float16,
        "float32": torch.float32,
        "float64": torch.float64,
        "int64": torch.int64,
    }

    def empty(self, n: int, dtype: str) -> Tensor:
        return torch.empty(n, dtype=self._DTYPES[dtype], device=self.device)

    def from_numpy(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def to_numpy(self, x: Tensor) -> np.ndarray:
        return x.cpu().numpy()

    def sort_(self, x: Tensor) -> Tensor:
        return torch.sort(x).values

    def top_k_sorted_(self, x: Tensor, k: int) -> tuple[Tensor, int]:
        n = x.shape[0]
        if k >= n:
            return self.sort_(x), 0
        top = torch.sort(torch.topk(x, k, sorted=False).values).values
        ties = int(torch.count_nonzero(x == top[0])) - int(torch.count_nonzero(top == top[0]))
        return top, ties

    def sort_with(self, x: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
        values, order = torch.sort(x, stable=True)
        return (values,) + tuple(o[order] for o in others)

    def unique_counts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.unique_consecutive(x, return_counts=True)

    def searchsorted(self, seq: Tensor, v: Tensor, right: bool, sorted_needles: bool = False) -> Tensor:
        return torch.searchsorted(seq, v, right=right)

    def bincount(self, idx: Tensor, weights: Tensor | None, n: int) -> Tensor:
        return torch.bincount(idx, weights=weights, minlength=n)

    def count_true(self, x: Tensor) -> int:
        return int(torch.count_nonzero(x))

    def count_greater(self, x: Tensor, t: Any) -> int:
        return int(torch.count_nonzero(x > t))

    def scalar(self, value: float, like: Tensor) -> Tensor:
        return torch.tensor(value, dtype=like.dtype, device=like.device)


def _flip(x: Any) -> Any:
    return x.flip(0) if isinstance(x, Tensor) else x[::-1]


# --------------------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------------------
def _as_2d_list(x: MapsLike, what: str) -> list[MapLike]:
    """(N,H,W), (N,1,H,W), (H,W) arrays or a sequence of (H,W) arrays -> list of 2-D arrays (views)."""
    if isinstance(x, Tensor | np.ndarray):
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim == 2:
            return [x]
        if x.ndim == 3:
            return list(x)
        raise ValueError(f"{what} must be (N,H,W), (N,1,H,W) or (H,W); got shape {tuple(x.shape)}")
    out = []
    for item in x:
        if not isinstance(item, Tensor | np.ndarray):
            item = np.asarray(item)
        if item.ndim == 3 and item.shape[0] == 1:
            item = item[0]
        if item.ndim != 2:
            raise ValueError(f"every item of {what} must be 2-D (H,W); got shape {tuple(item.shape)}")
        out.append(item)
    return out


def _pick_ops(arrays: Sequence[MapLike]) -> _NumpyOps | _TorchOps:
    for a in arrays:
        if isinstance(a, Tensor) and a.device.type != "cpu":
            return _TorchOps(a.device)
    return _NumpyOps()


def _to_backend(x: MapLike, ops: _NumpyOps | _TorchOps) -> Any:
    if isinstance(ops, _NumpyOps):
        if isinstance(x, Tensor):
            x = x.detach()
            if x.dtype == torch.bfloat16:
                x = x.float()  # numpy has no bfloat16; float32 holds it exactly
            return x.numpy()
        return np.asarray(x)
    if not isinstance(x, Tensor):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().to(ops.device)


def _is_float64(x: Any) -> bool:
    return x.dtype == torch.float64 if isinstance(x, Tensor) else x.dtype == np.float64


def _is_float(x: Any) -> bool:
    if isinstance(x, Tensor):
        return x.is_floating_point()
    return np.issubdtype(x.dtype, np.floating)


def _binarise(g: Any) -> Any:
    """Ground truth as bool: masks are binarised with > 0 (docs/metrics.md)."""
    is_bool = g.dtype == torch.bool if isinstance(g, Tensor) else g.dtype == np.bool_
    return g if is_bool else g > 0


def _has_nan(x: Any) -> bool:
    if not _is_float(x):
        return False
    return bool(torch.isnan(x).any()) if isinstance(x, Tensor) else bool(np.isnan(x).any())


# --------------------------------------------------------------------------------------------------------
# The pixel split: anomaly-free scores, anomalous scores and their regions
# --------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------
# AUROC, AP, F1-max from the two sorted arrays
# --------------------------------------------------------------------------------------------------------
def _require_both(
    sp: _PixelSplit | _ValueHistogram, negatives: str = "negatives", positives: str = "positives"
) -> None:
    if sp.n_pos == 0 and sp.n_neg == 0:
        raise UndefinedMetricError("no samples")
    if sp.n_pos == 0:
        raise UndefinedMetricError(f"no {positives} (only one label present)")
    if sp.n_neg == 0:
        raise UndefinedMetricError(f"no {negatives} (only one label present)")


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


@dataclass
class _RankStats:
    """Per distinct positive score: how many positives have it, and positives/negatives scoring >= and <."""

    counts: np.ndarray  # int64, positives with exactly this score
    tp_ge: np.ndarray  # int64, positives with score >= value
    neg_lt: np.ndarray  # int64, negatives with score < value
    neg_le: np.ndarray  # int64, negatives with score <= value
    n_pos: int
    n_neg: int
    #: The distinct positive scores themselves (ascending, the backend's array): the thresholds of the curves.
    values: Any = None


def _rank_stats(sp: _PixelSplit) -> _RankStats:
    _sort_split(sp)
    ops = sp.ops
    values, counts = ops.unique_counts(sp.pos)
    lt = ops.to_numpy(ops.searchsorted(sp.neg, values, right=False, sorted_needles=True))
    le = ops.to_numpy(ops.searchsorted(sp.neg, values, right=True, sorted_needles=True))
    counts = ops.to_numpy(counts).astype(np.int64, copy=False)
    tp_ge = np.cumsum(counts[::-1])[::-1]
    return _RankStats(counts, tp_ge, lt, le, sp.n_pos, sp.n_neg, values)


def _auroc_from_stats(st: _RankStats) -> float:
    # Mann-Whitney U with ties counted half: sum over positives of (#neg < s) + (#neg == s)/2.
    # Integer arithmetic is exact while n_pos * n_neg < 2**61 (~1.5e9 pixels per class side).
    if st.n_pos * st.n_neg < 2**61:
        twice_u = int(np.dot(st.counts, st.neg_lt + st.neg_le))
        return twice_u / (2 * st.n_pos * st.n_neg)
    u = np.sum(st.counts.astype(np.float64) * (st.neg_lt + st.neg_le))
    return float(u / (2.0 * st.n_pos * st.n_neg))


def _ap_from_stats(st: _RankStats) -> float:
    # sklearn's step-wise AP: sum over thresholds of (recall increase) * precision; recall only increases at
    # scores that positives have, where precision = tp(>=s) / (tp(>=s) + fp(>=s)).
    fp_ge = st.n_neg - st.neg_lt
    precision = st.tp_ge / (st.tp_ge + fp_ge)
    return float(np.sum(st.counts * precision) / st.n_pos)  # np.sum: deterministic, unlike BLAS dot


def _f1_max_from_stats(st: _RankStats) -> float:
    fp_ge = st.n_neg - st.neg_lt
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + n_pos); its maximum lies at a score positives have.
    f1 = 2.0 * st.tp_ge / (st.tp_ge + fp_ge + st.n_pos)
    return float(f1.max())


def binary_auroc(scores: MapLike, labels: MapLike) -> float:
    """Exact ROC AUC (ties count half, as ``sklearn.metrics.roc_auc_score``); scores need not be probabilities."""
    sp = _split_scores(scores, labels)
    _require_both(sp)
    return _auroc_from_stats(_rank_stats(sp))


def binary_average_precision(scores: MapLike, labels: MapLike) -> float:
    """Average precision as ``sklearn.metrics.average_precision_score`` (step-wise, not a trapezoid)."""
    sp = _split_scores(scores, labels)
    _require_both(sp)
    return _ap_from_stats(_rank_stats(sp))


def f1_max(scores: MapLike, labels: MapLike) -> float:
    """The best F1 over all thresholds (every distinct score)."""
    sp = _split_scores(scores, labels)
    _require_both(sp)
    return _f1_max_from_stats(_rank_stats(sp))


# --------------------------------------------------------------------------------------------------------
# PRO / AUPRO
# --------------------------------------------------------------------------------------------------------
def _check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    return fpr_limit


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


def _require_pro(sp: _PixelSplit | _ValueHistogram) -> None:
    if sp.n_regions == 0:
        raise UndefinedMetricError("no anomalous regions in the ground truth")
    if sp.n_neg == 0:
        raise UndefinedMetricError("no anomaly-free pixels in the ground truth")


def _top_normals(sp: _PixelSplit, k: int) -> tuple[Any, int]:
    """The k largest anomaly-free scores (ascending) and how many other anomaly-free pixels tie with the
    smallest of them."""
    ops = sp.ops
    n = int(sp.neg.shape[0])
    if sp.n_neg_below and not sp.neg_sorted:
        # A prefiltered split holds little more than the k pixels needed: one sort beats select-then-sort.
        sp.neg = ops.sort_(sp.neg)
        sp.neg_sorted = True
        _check_neg_nan(sp, sp.neg[-1])
    if sp.neg_sorted:
        top = sp.neg[n - k :]
        ties = (n - k) - int(ops.searchsorted(sp.neg, top[:1], right=False)[0])
    else:
        top, ties = ops.top_k_sorted_(sp.neg, k)
        _check_neg_nan(sp, top[-1])  # NaN is the largest for partition/topk and sorts last
    return top, ties


def _pro_steps(sp: _PixelSplit, fpr_limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact PRO curve down to the first threshold whose FPR exceeds ``fpr_limit``.

    Returns float64 arrays over the distinct anomaly-free scores u_1 > u_2 > ... (only these move the FPR):
    ``fpr[k]`` = FPR at threshold u_k, ``pro_ge[k]`` = PRO counting pixels with score >= u_k and
    ``pro_gt[k]`` = PRO counting pixels with score > u_k. The curve's polyline runs
    (fpr[k-1], pro_ge[k-1]) -> (fpr[k-1], pro_gt[k]) (vertical: anomalous pixels only) -> (fpr[k], pro_ge[k]).
    """
    _require_pro(sp)
    ops = sp.ops
    n_ok = sp.n_neg
    k = _normals_needed(n_ok, fpr_limit)
    top, ties = _top_normals(sp, k)
    thresholds, counts = ops.unique_counts(top)  # ascending
    n_thr = int(thresholds.shape[0])
    # Anomalous pixels below the lowest threshold never count, so only the rest are binned. For each pixel,
    # the number of thresholds <= its score (>= counting) and < its score (> counting).
    start = int(ops.searchsorted(sp.pos, thresholds[:1], right=False)[0])  # pos is sorted (_split_pixels)
    pos, weight = sp.pos[start:], sp.pos_weight[start:]
    idx_le = ops.searchsorted(thresholds, pos, right=True, sorted_needles=True)
    idx_lt = ops.searchsorted(thresholds, pos, right=False, sorted_needles=True)
    hist_ge = ops.to_numpy(ops.bincount(idx_le, weight, n_thr + 1))
    hist_gt = ops.to_numpy(ops.bincount(idx_lt, weight, n_thr + 1))
    counts = ops.to_numpy(counts).astype(np.int64)
    counts[0] += ties
    fpr = np.cumsum(counts[::-1]) / n_ok
    pro_ge = np.cumsum(hist_ge[::-1])[:n_thr] / sp.n_regions
    pro_gt = np.cumsum(hist_gt[::-1])[:n_thr] / sp.n_regions
    return fpr, pro_gt, pro_ge


def _aupro_from_split(sp: _PixelSplit, fpr_limit: float) -> float:
    """Exact AUPRO without materialising the curve: O(S log S) for the S anomaly-free pixels above the limit.

    With the anomaly-free scores above the limit sorted (``top``, ascending, t* = top[0]), every such pixel
    except those tied with t* closes one trapezoid of width 1/n_ok and mean height
    (PRO(> v) + PRO(>= v)) / 2 at its score v. Summed over pixels, an anomalous pixel p with weight
    1/|region| enters PRO(>= v) for the #{top <= p} - i0 of them above the t* tie (and PRO(> v) likewise with
    #{top < p}), so the whole area is one dot product over anomalous pixels; the last trapezoid (the t* tie,
    where the FPR crosses the limit) is interpolated at the limit.
    """
    _require_pro(sp)
    ops = sp.ops
    n_ok = sp.n_neg
    k = _normals_needed(n_ok, fpr_limit)
    top, ties = _top_normals(sp, k)
    i0 = int(ops.searchsorted(top, top[:1], right=True)[0])  # top values tied with t* = top[0]
    # Pixels below t* never count before the FPR passes the limit; pos is sorted (_split_pixels).
    start = int(ops.searchsorted(sp.pos, top[:1], right=False)[0])
    pos, weight = sp.pos[start:], sp.pos_weight[start:]
    n_le = ops.searchsorted(top, pos, right=True, sorted_needles=True)  # #top <= p
    # #top < p differs from #top <= p only where p equals a top score; search again just for those.
    n_lt = n_le.clone() if isinstance(n_le, Tensor) else n_le.copy()
    tied = (n_le > 0) & (top[(n_le - 1).clip(min=0)] == pos)
    n_lt[tied] = ops.searchsorted(top, pos[tied], right=False)
    n_le, n_lt, w = ops.to_numpy(n_le), ops.to_numpy(n_lt), ops.to_numpy(weight)
    above = np.maximum(n_le - i0, 0) + np.maximum(n_lt - i0, 0)
    # np.sum (pairwise, single-threaded), not np.dot: BLAS may split the sum by thread count, and N processes
    # must reproduce one process bit for bit.
    area = 0.5 * float(np.sum(w * above)) / (n_ok * sp.n_regions)
    # Last trapezoid: the t* tie group moves the FPR from x0 past the limit to x1.
    x0, x1 = (k - i0) / n_ok, (k + ties) / n_ok
    y0 = float(w[n_lt > 0].sum()) / sp.n_regions  # PRO(> t*)
    y1 = float(w.sum()) / sp.n_regions  # PRO(>= t*)
    if fpr_limit >= x1:
        area += 0.5 * (y0 + y1) * (x1 - x0)
    elif fpr_limit > x0:
        y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_limit) * (fpr_limit - x0)
    return area / fpr_limit


# --------------------------------------------------------------------------------------------------------
# 16-bit scores: counting the 65,536 bit patterns replaces sorting
# --------------------------------------------------------------------------------------------------------
# AnomalyEvaluator stores pixel scores as float16 by default. A 16-bit score takes one of 65,536 bit
# patterns, so one histogram per image (np.bincount, O(P)) holds everything the exact metrics need: the
# patterns in value order are the distinct thresholds. No split, no sort, no copy of the scores.
_FORMATS16 = {torch.float16: "float16", torch.bfloat16: "bfloat16", np.dtype(np.float16): "float16"}
_N_PATTERNS = 1 << 16


def _format16(map_list: Sequence[MapLike]) -> str | None:
    """'float16' or 'bfloat16' when every map is stored in that format, else None."""
    formats = {_FORMATS16.get(m.dtype) for m in map_list}
    return formats.pop() if len(formats) == 1 and None not in formats else None


@functools.cache
def _pattern_values(fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(value of every bit pattern as float64, the non-NaN patterns in ascending value order)."""
    patterns = torch.arange(_N_PATTERNS, dtype=torch.int32).to(torch.int16)
    values = patterns.view(getattr(torch, fmt)).double().numpy()
    order = np.argsort(values, kind="stable")  # NaN patterns sort last
    return values, order[: int(np.count_nonzero(~np.isnan(values)))]


def _pattern_counts(m: MapLike, weights: np.ndarray | None = None) -> np.ndarray:
    """Occurrences (or summed weights) of each bit pattern among the scores of m."""
    if isinstance(m, Tensor):
        bits = m.detach().reshape(-1).view(torch.int16)
        if bits.device.type != "cpu" and weights is None:
            return torch.bincount(bits.int() & 0xFFFF, minlength=_N_PATTERNS).cpu().numpy()
        bits = bits.cpu().numpy()
    else:
        bits = np.ascontiguousarray(m).reshape(-1)
    return np.bincount(bits.view(np.uint16), weights=weights, minlength=_N_PATTERNS)


@dataclass
class _ValueHistogram:
    """Pixel counts per distinct score (ascending): the exact-metric equivalent of a sorted split."""

    neg: np.ndarray  # int64, anomaly-free pixels with this score
    pos: np.ndarray  # int64, anomalous pixels with this score
    pos_weight: np.ndarray  # float64, sum of 1/|region| over those anomalous pixels
    n_regions: int
    values: np.ndarray | None = None  # float64, the distinct scores themselves

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())


def _histogram_pixels(map_list: Sequence[MapLike], mask_list: Sequence[MapLike]) -> _ValueHistogram:
    """Histograms of 16-bit scores by ground truth; regions are labelled as for the split."""
    fmt = _format16(map_list)
    every = np.zeros(_N_PATTERNS, dtype=np.int64)
    pos = np.zeros(_N_PATTERNS, dtype=np.int64)
    weight = np.zeros(_N_PATTERNS, dtype=np.float64)
    n_regions = 0
    for m, g in zip(map_list, mask_list, strict=True):
        every += _pattern_counts(m)
        g = _binarise(g.detach().cpu().numpy() if isinstance(g, Tensor) else np.asarray(g))
        if not g.any():
            continue
        anomalous = m.detach().cpu()[torch.from_numpy(g)] if isinstance(m, Tensor) else np.asarray(m)[g]
        pixel_weight, size, _ = _region_weights(g, tuple(g.shape))
        pos += _pattern_counts(anomalous)
        weight += _pattern_counts(anomalous, pixel_weight)
        n_regions += len(size)
    values, order = _pattern_values(fmt)
    nan = np.isnan(values)
    if pos[nan].any():
        raise ValueError("anomaly maps contain NaN (at anomalous pixels)")
    if (every - pos)[nan].any():
        raise ValueError("anomaly maps contain NaN (at anomaly-free pixels)")
    # Patterns with equal values (-0 and +0) are one threshold.
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))

    def by_value(counts: np.ndarray) -> np.ndarray:
        return np.add.reduceat(counts[order], starts)

    return _ValueHistogram(
        by_value(every - pos), by_value(pos), by_value(weight), n_regions, values=ordered[starts]
    )


def _rank_stats_from_histogram(h: _ValueHistogram) -> _RankStats:
    neg_le = np.cumsum(h.neg)
    present = h.pos > 0
    counts = h.pos[present]
    tp_ge = np.cumsum(counts[::-1])[::-1]
    values = None if h.values is None else h.values[present]
    return _RankStats(counts, tp_ge, (neg_le - h.neg)[present], neg_le[present], h.n_pos, h.n_neg, values)


def _pro_steps_from_histogram(h: _ValueHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_pro_steps`` (same arrays, same meaning) over every distinct anomaly-free score."""
    _require_pro(h)
    neg_ge = np.cumsum(h.neg[::-1])[::-1]
    weight_ge = np.cumsum(h.pos_weight[::-1])[::-1]
    thresholds = np.flatnonzero(h.neg)[::-1]  # descending scores
    fpr = neg_ge[thresholds] / neg_ge[0]
    pro_ge = weight_ge[thresholds] / h.n_regions
    pro_gt = (weight_ge - h.pos_weight)[thresholds] / h.n_regions
    return fpr, pro_gt, pro_ge


def _aupro_from_histogram(h: _ValueHistogram, fpr_limit: float) -> float:
    x, y = _pro_polyline(*_pro_steps_from_histogram(h), fpr_limit)
    return trapezoid_area(x, y, fpr_limit) / fpr_limit


def pro_curve(maps: MapsLike, masks: MapsLike, fpr_limit: float | None = None) -> tuple[Tensor, Tensor]:
    """The exact PRO curve as polyline vertices ``(fpr, pro)`` (float64, CPU), starting at (0, 0).

    Without ``fpr_limit`` the curve ends at (1, 1) like the MVTec AD code; with it, the curve stops at the
    first vertex whose FPR exceeds the limit (all that AUPRO needs, and only those pixels get sorted).
    Vertices on vertical segments are merged: the polyline is the same as with one vertex per threshold.
    """
    limit = 1.0 if fpr_limit is None else _check_fpr_limit(fpr_limit)
    map_list, mask_list = _paired_maps(maps, masks)
    if _format16(map_list):
        fpr, pro_gt, pro_ge = _pro_steps_from_histogram(_histogram_pixels(map_list, mask_list))
    else:
        fpr, pro_gt, pro_ge = _pro_steps(_split_pixels(map_list, mask_list, aupro_fpr_limit=limit), limit)
    x, y = _pro_polyline(fpr, pro_gt, pro_ge, limit)
    if fpr_limit is None and y[-1] < 1.0:  # anomalous pixels scored below every anomaly-free pixel
        x, y = np.append(x, 1.0), np.append(y, 1.0)
    return torch.from_numpy(x), torch.from_numpy(y)


def _pro_polyline(
    fpr: np.ndarray, pro_gt: np.ndarray, pro_ge: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the PRO polyline from (0, 0) to the first vertex whose FPR reaches past ``limit``."""
    n = min(fpr.shape[0], int(np.searchsorted(fpr, limit, side="right")) + 1)
    x = np.zeros(2 * n + 1)
    y = np.zeros(2 * n + 1)
    x[1::2] = np.concatenate(([0.0], fpr[: n - 1]))
    x[2::2] = fpr[:n]
    y[1::2] = pro_gt[:n]
    y[2::2] = pro_ge[:n]
    return x, np.minimum(y, 1.0)  # summed weights may round past 1 (the MVTec AD code clips too)


def trapezoid_area(x: MapLike, y: MapLike, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing x, from x[0] to ``x_max``, y linearly interpolated
    at ``x_max``. A curve that ends before ``x_max`` is integrated to its end (not extrapolated)."""
    xs = np.asarray(x.cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    ys = np.asarray(y.cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
    stop = int(np.searchsorted(xs, x_max, side="right"))
    area = float(np.sum(0.5 * (ys[1:stop] + ys[: stop - 1]) * (xs[1:stop] - xs[: stop - 1])))
    if 0 < stop < xs.shape[0] and x_max > xs[stop - 1]:
        x0, x1, y0, y1 = xs[stop - 1], xs[stop], ys[stop - 1], ys[stop]
        y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_max) * (x_max - x0)
    return area


def aupro(maps: MapsLike, masks: MapsLike, fpr_limit: float = 0.3) -> float:
    """Exact normalised AUPRO (MVTec AD definition): area under PRO over FPR in [0, fpr_limit] / fpr_limit.

    ``maps``/``masks``: (N,H,W) arrays or sequences of (H,W) arrays (sizes may differ between images),
    torch or numpy; masks are binarised with > 0. O(P + S log S) for P pixels, S of them above the limit.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    map_list, mask_list = _paired_maps(maps, masks)
    if _format16(map_list):
        return _aupro_from_histogram(_histogram_pixels(map_list, mask_list), fpr_limit)
    return _aupro_from_split(_split_pixels(map_list, mask_list, aupro_fpr_limit=fpr_limit), fpr_limit)


def _legacy_from_split(sp: _PixelSplit, fpr_limit: float, num_thresholds: int) -> float:
    """The cflow-style AUPRO from a split with region ids: the reference code's thresholds and arithmetic,
    but FPR counts and per-region hits come from the sorted split (one search per threshold and one
    histogram of the anomalous pixels by (region, threshold bin)) instead of 200 passes over every pixel.
    Counts are integers, so the result is the reference's bit for bit."""
    _require_pro(sp)
    if sp.n_neg_below:
        raise RuntimeError("the legacy AUPRO needs every anomaly-free pixel; split without aupro_fpr_limit")
    _sort_split(sp)
    ops = sp.ops
    lo = min(float(sp.neg[0]), float(sp.pos[0]))
    hi = max(float(sp.neg[-1]), float(sp.pos[-1]))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UndefinedMetricError("scores include infinity: the legacy thresholds are undefined")
    # Reproduce the reference code's arithmetic: thresholds in the maps' dtype (float32 in practice).
    dtype = np.float64 if _is_float64(sp.neg) else np.float32
    min_th, max_th = dtype(lo), dtype(hi)
    delta = (max_th - min_th) / dtype(num_thresholds)
    if not delta > 0:
        raise UndefinedMetricError("all anomaly scores are equal: the legacy thresholds are undefined")
    thresholds = np.arange(min_th, max_th, delta)
    n_thr = len(thresholds)
    # np.arange returns float64; each threshold is compared in the maps' dtype, as numpy 1.x did with the
    # reference's ``amaps <= th``.
    th = ops.from_numpy(thresholds.astype(dtype))
    # FPR(t) = #(neg > t) / n_neg; neg is sorted.
    neg_le = ops.to_numpy(ops.searchsorted(sp.neg, th, right=True)).astype(np.int64)
    fprs = (sp.n_neg - neg_le) / sp.n_neg
    # An anomalous pixel p counts at threshold i iff p > t_i, i.e. for i < #(t < p): histogram by region and
    # that bin, then sum the bins above i.
    bins = ops.searchsorted(th, sp.pos, right=False, sorted_needles=True)
    flat = sp.pos_region * (n_thr + 1) + bins
    hist = ops.to_numpy(ops.bincount(flat, None, sp.n_regions * (n_thr + 1))).reshape(sp.n_regions, n_thr + 1)
    tp = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)  # [region, threshold]
    ratio = np.ascontiguousarray((tp / sp.region_sizes.astype(np.float64)[:, None]).T)
    pros = np.array([np.mean(row) for row in ratio])  # per threshold, as the reference's np.mean
    keep = fprs < fpr_limit
    if int(keep.sum()) < 2:
        raise UndefinedMetricError(f"fewer than 2 of the legacy thresholds have FPR < {fpr_limit}")
    f, p = fprs[keep], pros[keep]
    span = f.max() - f.min()
    if not span > 0:
        raise UndefinedMetricError(f"the legacy FPRs below {fpr_limit} are all equal: rescaling is undefined")
    f = (f - f.min()) / span
    # sklearn.metrics.auc on FPRs that fall as the threshold rises: area = -trapezoid(p, f).
    return float(-np.sum(0.5 * (p[1:] + p[:-1]) * (f[1:] - f[:-1])))


def legacy_cflow_aupro(
    maps: MapsLike, masks: MapsLike, fpr_limit: float = 0.3, num_thresholds: int = CFLOW_THRESHOLDS
) -> float:
    """The biased "cflow-style" AUPRO of the AnomalyCLIP/VAND/MuSc code, only for comparison with their numbers.

    ``num_thresholds`` thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` over all scores,
    keep points with FPR < ``fpr_limit``, min-max rescale those FPRs to [0, 1], then the trapezoid rule.
    Regions are labelled once (the reference relabels per threshold; same result).
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    sp = _split_pixels(maps, masks, region_ids=True)
    return _legacy_from_split(sp, fpr_limit, num_thresholds)


def pixel_metrics(
    maps: MapsLike,
    masks: MapsLike,
    fpr_limit: float = 0.3,
    metrics: Sequence[str] = PIXEL_METRICS,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Pixel AUROC, pixel AP, the exact AUPRO and the cflow-style AUPRO (``aupro_cflow``) sharing one split
    and one sort of the anomaly-free pixels (or, for 16-bit scores without ``aupro_cflow``, one histogram).

    Returns (values, reasons): an undefined metric has value None and its reason in ``reasons``.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    unknown = [m for m in metrics if m not in PIXEL_METRICS]
    if unknown:
        raise ValueError(f"unknown pixel metrics {unknown}; choose from {PIXEL_METRICS}")
    want_pro = "aupro" in metrics
    want_cflow = "aupro_cflow" in metrics
    ranking = "pixel_auroc" in metrics or "pixel_ap" in metrics
    map_list, mask_list = _paired_maps(maps, masks)
    source: _PixelSplit | _ValueHistogram
    if _format16(map_list) and not want_cflow:
        source = _histogram_pixels(map_list, mask_list)
        exact_aupro, rank_stats = _aupro_from_histogram, _rank_stats_from_histogram
    else:
        full = ranking or want_cflow
        source = _split_pixels(
            map_list,
            mask_list,
            regions=want_pro or want_cflow,
            region_ids=want_cflow,
            aupro_fpr_limit=None if full else fpr_limit,
        )
        exact_aupro, rank_stats = _aupro_from_split, _rank_stats
        if full and source.n_pos > 0 and source.n_neg > 0:
            _sort_split(source)  # the full sort serves AUROC/AP and the cflow thresholds; AUPRO reads its top
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> None:
        try:
            values[name] = float(fn())
        except UndefinedMetricError as err:
            values[name] = None
            reasons[name] = str(err)

    if want_pro:
        attempt("aupro", lambda: exact_aupro(source, fpr_limit))
    if want_cflow:
        attempt("aupro_cflow", lambda: _legacy_from_split(source, fpr_limit, CFLOW_THRESHOLDS))
    if ranking:
        stats: list[_RankStats] = []

        def get_stats() -> _RankStats:
            if not stats:
                _require_both(source, negatives="anomaly-free pixels", positives="anomalous pixels")
                stats.append(rank_stats(source))
            return stats[0]

        if "pixel_auroc" in metrics:
            attempt("pixel_auroc", lambda: _auroc_from_stats(get_stats()))
        if "pixel_ap" in metrics:
            attempt("pixel_ap", lambda: _ap_from_stats(get_stats()))
    return values, reasons
