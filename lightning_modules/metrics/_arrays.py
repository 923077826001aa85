"""What every metric module shares: the input types, :class:`UndefinedMetricError`, CPU threading, the
numpy/torch backends (the few operations whose spellings differ) and input normalisation."""

from __future__ import annotations

import ctypes
import functools
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

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


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):  # another C library (macOS, musl): nothing to do
        return None


_MALLOC_TRIM = _find_malloc_trim()


def return_freed_memory() -> None:
    """Hand the heap pages freed so far back to the operating system (glibc's ``malloc_trim``).

    A finished category's pixel states are freed as chunks of a few MiB (one per batch), which glibc keeps on
    its heap once its mmap threshold has risen to their size; the next category's allocations do not fit all
    of those holes, so without this a process's peak RSS grew with the number of categories it had scored
    (2.0x the largest category alone after 12 categories of 50-75 maps of 518 px; 1.1x with a fixed mmap
    threshold: ``benchmarks/scale_eval.py``)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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
