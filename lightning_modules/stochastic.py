"""Seeded randomness for stochastic inference: every draw comes from a generator of its own key.

A method that samples at test time (Bayes-PFL's Monte-Carlo prompts) draws each image's randomness from a
CPU generator seeded by ``(seed, dataset, image key)`` (:func:`keyed_generator`), never from the global RNG.
An image's result is then a function of the image and the seed alone: the same whatever the batch size, the
number of loader workers, the DDP world size or the order of the test set, and a rerun is bit-identical.
Draws are made on the CPU and moved to the device, so they do not depend on the accelerator either.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.resumable import derived_seed


def keyed_generator(seed: int, *key: int | str) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and ``key`` (e.g. the dataset and an image's relative path)."""
    return torch.Generator().manual_seed(derived_seed(seed, *key))


def keyed_normal(
    seed: int,
    keys: Sequence[tuple[int | str, ...]],
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[len(keys), *shape]`` standard normal draws, row ``i`` from the generator of ``keys[i]``."""
    rows = [torch.randn(tuple(shape), generator=keyed_generator(seed, *key)) for key in keys]
    if not rows:
        return torch.empty(0, *shape, device=device, dtype=dtype)
    return torch.stack(rows).to(device=device, dtype=dtype)


def image_keys(
    dataset: str, paths: Sequence[str], root: str | Path | None, by_content: bool = False
) -> list[tuple[str, str]]:
    """``(dataset, key)`` per image: a key that names the image whatever the batch it comes in or the process
    that loads it. A benchmark's image: its path relative to the dataset root, so a copy of the dataset in
    another folder gives the same numbers. ``by_content`` (``zsad predict``'s inputs, which have no dataset
    root: ``ImageFolderDataModule.keys_by_content``): the SHA-256 of the file, so an image's draws do not
    change with the other inputs of the call (their common folder does)."""
    keys = []
    for path in paths:
        if by_content:
            keys.append((dataset, content_key(path)))
            continue
        relative = Path(path)
        if root is not None:
            with contextlib.suppress(ValueError):
                relative = relative.relative_to(Path(root))
        keys.append((dataset, relative.as_posix()))
    return keys


def key_source(datamodule: Any) -> tuple[Path | None, bool]:
    """What :func:`image_keys` names a datamodule's images by: its dataset root, and whether by content
    (``keys_by_content``: ``zsad predict``'s inputs)."""
    root = getattr(getattr(datamodule, "full_index", None), "root", None)
    return root, bool(getattr(datamodule, "keys_by_content", False))


def content_key(path: str | Path) -> str:
    """``sha256:<hex>`` of the file's bytes (cached while its size and modification time stay)."""
    stat = Path(path).stat()
    return _content_key(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"
