"""What data a run saw: a fingerprint of an index's files, and what changed since.

A run's numbers belong to the images it read. The fingerprint of an index lists every image and mask file
(its path below the dataset root, size and modification time) and, where that is cheap, a SHA-256 of its
content: for the masks and for the images of a set, each when they total at most
:data:`CONTENT_HASH_LIMIT` bytes (masks nearly always do: small files). Its ``digest`` identifies the data in one string; the per-file list says
what changed (:func:`changes`). Training checkpoints carry the fingerprint of the training split, so a
resume onto other data is refused naming the files; results record the fingerprint summary
(:func:`summary`) of every target, so two results can be compared knowing whether they saw the same images;
the feature cache's key includes the digest, so a table of other images is never reused.

"Changed" means other content. A file whose content is hashed counts as the same when its hash is,
whatever its modification time says (a ``touch``, a copy without ``-p``, a re-download of the same
bytes); a file whose content is not hashed (an image of a large set) counts as changed when its size or
modification time differs, as ``rsync`` and ``make`` decide: hashing every image of a large dataset at
every start would cost more than the check is worth, and a restored modification time (``cp -p``,
``rsync -a``, ``touch -d``) makes it the same file again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from datamodules.images import region_files
from datamodules.index import DatasetIndex

FINGERPRINT_FORMAT = 1
#: The images (and, separately, the masks) of a set are hashed when they total at most this many bytes.
CONTENT_HASH_LIMIT = 256 * 2**20
_READ_CHUNK = 1 << 20

# One file: [size in bytes, modification time in ns, SHA-256 hex of the content or None]
FileEntry = list[Any]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's content, read in chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def relative_name(path: Path, root: Path) -> str:
    """A file's name in the fingerprint: its path below the dataset root (the root itself is part of
    the run's config), or the path as given for a file outside it (a parser that follows a file list)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


#: The ``content`` of a fingerprint whose digest hashes every file's bytes (comparable across copies).
EVERY_FILE_HASHED = "sha256 of every file"


def _entry(path: Path, hash_content: bool) -> FileEntry:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, file_sha256(path) if hash_content else None]


def index_files(index: DatasetIndex) -> tuple[list[Path], list[Path]]:
    """The image and mask files of an index, each once, in index order; a mask that is a folder of region
    PNGs (MVTec LOCO, AutoVI) counts by its region files."""
    images = list(dict.fromkeys(record.image_path for record in index.records))
    masks = list(
        dict.fromkeys(
            file
            for r in index.records
            if r.mask_path is not None
            for file in (region_files(r.mask_path) if r.mask_path.is_dir() else [r.mask_path])
        )
    )
    return images, masks


def digest(files: Mapping[str, FileEntry]) -> str:
    """One identity for the files: per file its content hash where there is one, else size and time."""
    items = sorted((name, entry[2] or [entry[0], entry[1]]) for name, entry in files.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def index_fingerprint(index: DatasetIndex, content_limit: int = CONTENT_HASH_LIMIT) -> dict[str, Any]:
    """The fingerprint of ``index`` (see the module doc): ``{"format", "root", "content", "files",
    "bytes", "digest"}``, ``files`` mapping each file's name to its :data:`FileEntry`. Raises
    ``FileNotFoundError`` for a file the index names but the disk does not have."""
    root = Path(index.root)
    images, masks = index_files(index)
    hash_images, hash_masks = (
        sum(p.stat().st_size for p in paths) <= content_limit for paths in (images, masks)
    )
    files: dict[str, FileEntry] = {}
    for paths, hashed in ((images, hash_images), (masks, hash_masks)):
        for path in paths:
            files[relative_name(path, root)] = _entry(path, hashed)
    content = {
        (True, True): EVERY_FILE_HASHED,
        (False, True): "sha256 of masks; images by size and time",
        (True, False): "sha256 of images; masks by size and time",
        (False, False): "every file by size and time",
    }[hash_images, hash_masks]
    return {
        "format": FINGERPRINT_FORMAT,
        "root": str(root),
        "content": content,
        "files": files,
        "bytes": sum(entry[0] for entry in files.values()),
        "digest": digest(files),
    }


def summary(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint without its per-file list: what results record."""
    return {key: value for key, value in fingerprint.items() if key != "files"} | {
        "n_files": len(fingerprint.get("files", {}))
    }


def _same(before: FileEntry, now: FileEntry) -> bool:
    if before[0] != now[0]:
        return False
    if before[2] is not None and now[2] is not None:
        return before[2] == now[2]
    return before[1] == now[1]


def changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{"added": [...], "removed": [...], "changed": [...]}`` (file names, sorted) between two
    fingerprints; all empty when they describe the same data."""
    old, new = before.get("files", {}), now.get("files", {})
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(name for name in set(old) & set(new) if not _same(old[name], new[name])),
    }


def describe_changes(found: Mapping[str, Iterable[str]], shown: int = 3) -> str:
    """``1 removed (a.png), 2 changed (b.png, c.png)``: at most ``shown`` names per kind."""
    parts = []
    for kind in ("added", "removed", "changed"):
        names = list(found.get(kind, []))
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {kind} ({', '.join(names[:shown])}{more})")
    return ", ".join(parts)
