"""Atomic file writes for every layer: readers see the old file or the whole new one, never a part.

Lives in the lowest layer (``datamodules``) with the errors, so that the feature cache, the CMG relevance
cache, checkpoints and the results files all write through one implementation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from datamodules.errors import WriteFailedError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp gives 0600)


def _free_space(folder: Path) -> str:
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    raise AssertionError


def write_error(path: Path, error: OSError) -> WriteFailedError:
    """One line for a failed write: what, where, why and how much space the filesystem has left."""
    reason = error.strerror or str(error)
    code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
    return WriteFailedError(
        f"cannot write {path.name} in {path.parent}: {reason}{code}; {_free_space(path.parent)} there",
        path=path,
    )


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write(handle)`` so that readers see the old file or the whole new one.

    A unique temp file in the same folder is written, fsynced and renamed over ``path`` (then the folder
    is fsynced), so concurrent writers never collide and a crash never leaves a partial file under the
    real name. On any failure the temp file is removed; an OS error (a full disk, permissions) becomes
    :class:`WriteFailedError` naming the file and the free space.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise write_error(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise write_error(path, error) from error
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every filesystem lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write` (a kill or a full disk never leaves a partial file)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: torch.save(obj, handle))
