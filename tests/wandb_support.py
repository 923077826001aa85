"""Reading an offline W&B run back (what `wandb sync` would upload), for tests of what zsad logs.

A ``run-*.wandb`` file is a 7-byte header (``:W&B``, magic 0xBEE1, version 0) followed by LevelDB-log
records in 32 KiB blocks (4-byte CRC, 2-byte length, 1-byte type: full / first / middle / last chunk);
each record is a protobuf ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[Any]:
    """Every protobuf record of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    offset, pending = _HEADER, b""
    while offset + 7 <= len(data):
        room = _BLOCK - offset % _BLOCK
        if room < 7:  # block trailer padding
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind in (_FULL, _FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def logged_values(run_dir: Path) -> dict[str, list[Any]]:
    """Key -> every value logged under it (``run.log`` history), JSON-decoded, from the run's ``.wandb``."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    values: dict[str, list[Any]] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            values.setdefault(key, []).append(json.loads(item.value_json))
    return values
