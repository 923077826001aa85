"""Loading checkpoints without running code from them.

A checkpoint is a pickle, and unpickling can call any function the file names (``__reduce__``): loading
a crafted file with ``torch.load(weights_only=False)`` runs its code before anything can be checked.
zsad therefore loads every checkpoint with ``weights_only=True`` (tensors, containers, numbers, strings)
plus the explicit allow-list :data:`SAFE_GLOBALS` of the other types the checkpoints zsad writes
contain. A file that needs anything else is refused with :class:`UnsafeCheckpointError`, naming the
types, and nothing of it is executed.

Lightning's own loading (``trainer.fit(ckpt_path=..., weights_only=True)``) honours the same list when
run inside :func:`safe_globals`.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.errors import ZsadError

# Beyond what weights_only always allows: numpy arrays and their dtypes, which RNG states hold
# (numpy's legacy ``get_state()`` is a tuple with a uint32 array). Add a type here only when zsad itself
# writes it into a checkpoint, and say where.
SAFE_GLOBALS: tuple[Any, ...] = (
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.bool_)),
)


class UnsafeCheckpointError(ZsadError):
    """A checkpoint names code or types that zsad never writes; it was not loaded."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


@contextlib.contextmanager
def safe_globals() -> Iterator[None]:
    """Allow :data:`SAFE_GLOBALS` in every ``torch.load(weights_only=True)`` inside the block."""
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        yield


def _named(value: Any) -> str:
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"


def unsafe_globals(path: str | Path) -> list[str]:
    """The globals a checkpoint file names beyond what :func:`safe_torch_load` allows (read from the
    pickle's opcodes, nothing is executed)."""
    allowed = {_named(value) for value in SAFE_GLOBALS}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: the unpickling error says enough
        return []
    return [name for name in names if name not in allowed]


def safe_torch_load(path: str | Path, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed.

    Raises :class:`UnsafeCheckpointError` (nothing executed) when the file needs other types; other
    errors (missing file, a truncated or corrupt file) propagate as ``torch.load`` raises them."""
    try:
        with safe_globals():
            return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        names = unsafe_globals(path) or sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))
        if not names and "weights_only" not in str(error).lower().replace(" ", "_"):
            raise  # a damaged pickle, not a refused one
        what = ", ".join(names) if names else "pickle instructions or types outside the allow-list"
        raise UnsafeCheckpointError(
            f"refused to load {path}: it needs code or types that zsad checkpoints never contain ({what}); "
            "nothing of it was run. Load only checkpoints written by zsad (or plain tensor state dicts)",
            path=path,
        ) from None
