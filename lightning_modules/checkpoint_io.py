"""Loading checkpoints without running code from them, and only when they are what they claim to be.

A checkpoint is a pickle, and unpickling can call any function the file names (``__reduce__``): loading
a crafted file with ``torch.load(weights_only=False)`` runs its code before anything can be checked.
zsad therefore loads every checkpoint with ``weights_only=True`` (tensors, containers, numbers, strings)
plus the explicit allow-list :data:`SAFE_GLOBALS` of the other types the checkpoints zsad writes
contain. A file that needs anything else is refused with :class:`UnsafeCheckpointError`, naming the
types, and nothing of it is executed.

Integrity: ``torch.save`` writes a zip archive with a CRC-32 of every record (the pickle and each tensor's
bytes), in the same file and so atomically with it, but ``torch.load`` never checks them (its zip reader
is built without CRC checks): a flipped bit in a tensor loads silently. :func:`safe_torch_load` checks
every record against its CRC-32 first (:func:`verify_checksums`), so a damaged file is refused as
:class:`CorruptCheckpointError` instead of being loaded. A file that is not a checkpoint at all (a text
file, an image, a NumPy array) is :class:`NotACheckpointError`, saying what it is.

Lightning's own loading (``trainer.fit(ckpt_path=..., weights_only=True)``) honours the same list when
run inside :func:`safe_globals`, and zsad's checkpoint IO (``pipelines.checkpointing``) loads through
:func:`safe_torch_load`.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
import zlib
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
ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 24  # bytes read at a time while checking a record's CRC-32
# Modules whose globals a pickle may name without asking for code (torch's tensor rebuilding, numpy's
# arrays, OrderedDict): only used to tell an unsafe pickle from one torch cannot read for other reasons.
_DATA_MODULES = ("torch", "numpy", "collections", "builtins", "_codecs")


class CheckpointError(ZsadError):
    """A checkpoint file that cannot be used; the message says what the file is and what to do."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


class CorruptCheckpointError(CheckpointError):
    """The file is a checkpoint, but truncated or damaged (a CRC-32 mismatch, a cut archive)."""


class NotACheckpointError(CheckpointError):
    """The file is something else (text, an image, an array, a plain pickle)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint names code or types that zsad never writes; it was not loaded."""


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


def pickle_globals(data: bytes) -> list[str] | None:
    """The globals (``module.name``) a pickle asks for, read from its opcodes without running it; None
    when ``data`` is no complete pickle (random bytes, a cut file)."""
    names: set[str] = set()
    stack: list[str | None] = []  # what the opcodes pushed (strings as such): STACK_GLOBAL takes two
    memo: dict[Any, str | None] = {}
    try:
        for opcode, argument, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "GLOBAL":
                names.add(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(stack) >= 2:
                names.add(f"{stack[-2]}.{stack[-1]}")
            if opcode.name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[argument] = stack[-1] if stack else None
            elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(argument))
            elif opcode.stack_after:
                stack.append(argument if isinstance(argument, str) else None)
            stack = stack[-2:]
    except Exception:  # noqa: BLE001 - pickletools raises many types for bytes that are not a pickle
        return None
    return sorted(names)


def _asks_for_code(names: list[str]) -> list[str]:
    allowed = {_named(value) for value in SAFE_GLOBALS}
    return [n for n in names if n not in allowed and n.split(".")[0] not in _DATA_MODULES]


def _file_kind(head: bytes) -> str | None:
    """What a file that is not a PyTorch checkpoint is, from its first bytes; None when unknown."""
    for magic, kind in (
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"II*\x00", "a TIFF file"),
        (b"MM\x00*", "a TIFF file"),
        (b"\x93NUMPY", "a NumPy array (.npy)"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"\x89HDF", "an HDF5 file"),
    ):
        if head.startswith(magic):
            return kind
    if head and b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if sum(c.isprintable() or c in "\n\r\t" for c in text) >= 0.95 * len(text):
            start = " ".join(text.split())[:40]
            return f"a text file (it starts with {start!r})"
    return None


def _corrupt(path: str | Path, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{path} is truncated or corrupt ({reason}); re-copy it", path=path)


def _record_crc(mapped: mmap.mmap, info: zipfile.ZipInfo) -> int:
    """The CRC-32 of a stored record's bytes, read in place from the mapped archive (``torch.save``
    stores records uncompressed; the local header before them is 30 bytes plus name and extra field)."""
    header = mapped[info.header_offset : info.header_offset + 30]
    if header[:4] != ZIP_MAGIC:
        raise zipfile.BadZipFile(f"the local header of {info.filename} is damaged")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    end = start + info.file_size
    if end > len(mapped):
        raise zipfile.BadZipFile(f"{info.filename} runs past the end of the file")
    crc = 0
    with memoryview(mapped) as data:  # released before the caller closes the map
        for offset in range(start, end, _CHUNK):
            crc = zlib.crc32(data[offset : min(offset + _CHUNK, end)], crc)
    return crc


def verify_checksums(path: str | Path) -> None:
    """Check every record of a ``torch.save`` zip archive against the CRC-32 stored with it.

    Raises :class:`CorruptCheckpointError` naming the first damaged record; a record stored without a
    checksum (``torch.serialization.set_crc32_options(False)``) is not checked. The file is mapped, not
    copied: the check costs one pass of ``zlib.crc32`` over it (benchmarks/integrity.py)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = [i for i in archive.infolist() if i.CRC != 0 or not i.file_size]
            for info in records if any(i.compress_type != zipfile.ZIP_STORED for i in records) else []:
                with archive.open(info) as member:  # compressed (not torch.save's): zipfile checks it
                    while member.read(_CHUNK):
                        pass
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for info in records:
                if info.compress_type == zipfile.ZIP_STORED and _record_crc(mapped, info) != info.CRC:
                    raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    except zipfile.BadZipFile as error:
        reason = str(error)
        if reason.startswith("Bad CRC-32"):
            record = reason.split("for file", 1)[-1].strip(" '\"")
            reason = f"the bytes of {record} do not match the CRC-32 stored with them"
        elif "not a zip file" in reason:
            reason = "its zip directory, at the end of the file, is missing: the file was cut short"
        raise _corrupt(path, reason) from None
    except (EOFError, OSError, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise _corrupt(path, " ".join(str(error).split()) or type(error).__name__) from None


def _head(path: Path, size: int = 512) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _check_file(path: Path) -> bool:
    """Refuse what is not a (complete, undamaged) checkpoint before torch reads it; True for a zip
    checkpoint (whose records were just checked), False for a legacy pickle checkpoint."""
    if path.is_dir():
        raise NotACheckpointError(f"{path} is a folder, not a checkpoint file", path=path)
    head = _head(path)
    if not head:
        raise _corrupt(path, "it is empty: 0 bytes")
    if head.startswith(ZIP_MAGIC):
        verify_checksums(path)
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                npz = any(n.endswith(".npy") for n in archive.namelist())
                kind = "a NumPy .npz archive" if npz else "a zip archive"
                raise NotACheckpointError(
                    f"{path} is not a checkpoint: it is {kind} without torch.save's data.pkl", path=path
                )
        return True
    if head[:1] == b"\x80":  # a pickle: torch's legacy format (protocol 2) or a plain pickle
        return False
    kind = _file_kind(head)
    if kind is not None:
        raise NotACheckpointError(
            f"{path} is not a checkpoint: it is {kind}; zsad reads files written by torch.save "
            "(zsad train writes RUN/checkpoints/last.ckpt)",
            path=path,
        )
    raise _corrupt(
        path, f"neither a torch.save archive nor a pickle: its first bytes are {head[:8].hex(' ')}"
    )


def _refusal(path: Path, error: pickle.UnpicklingError, is_zip: bool) -> CheckpointError:
    """What an unpickling failure of ``torch.load(weights_only=True)`` says about the file: a pickle that
    asks for code (unsafe), a plain pickle torch cannot read, or damaged bytes."""
    names = unsafe_globals(path) if is_zip else []
    names = names or sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))
    if not names:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        found = pickle_globals(data)
        if found is None:
            return _corrupt(path, "its pickle cannot be parsed")
        names = _asks_for_code(found)
        if not names:
            return NotACheckpointError(
                f"{path} is not a checkpoint: it is a Python pickle that torch.load(weights_only=True) cannot "
                "read (written by pickle.dump, not torch.save); it was not loaded",
                path=path,
            )
    return UnsafeCheckpointError(
        f"refused to load {path}: it needs code or types that zsad checkpoints never contain "
        f"({', '.join(names)}); nothing of it was run. Load only checkpoints written by zsad (or plain "
        "tensor state dicts)",
        path=path,
    )


def safe_torch_load(path: str | Path, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed, after checking the
    file's CRC-32s (:func:`verify_checksums`).

    Raises :class:`CorruptCheckpointError` (truncated, damaged), :class:`NotACheckpointError` (another
    kind of file) or :class:`UnsafeCheckpointError` (needs other types; nothing executed), each naming the
    file; a missing file raises ``FileNotFoundError``."""
    path = Path(path)
    is_zip = _check_file(path)
    try:
        with safe_globals(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a plain pickle: refused
            return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        raise _refusal(path, error, is_zip) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError) or re.search(r"\b(CUDA|device)\b", str(error)):
            raise  # not about the file (a map_location this machine cannot serve)
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise _corrupt(path, reason) from None


def read_checkpoint(path: str | Path) -> Any:
    """:func:`safe_torch_load` of a checkpoint a user named (``checkpoint=``): a missing file is a
    :class:`CheckpointError` too."""
    try:
        return safe_torch_load(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}", path=path) from None
