"""Reading an offline W&B run back (what `wandb sync` would upload), for tests of what zsad logs.

A ``run-*.wandb`` file is a 7-byte header (``:W&B``, magic 0xBEE1, version 0) followed by LevelDB-log
records in 32 KiB blocks (4-byte CRC, 2-byte length, 1-byte type: full / first / middle / last chunk);
each record is a protobuf ``wandb.proto.wandb_internal_pb2.Record``. wandb-core writes the file in its own
process, a moment after ``finish()`` returns, so readers wait for the run's exit record.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = 7
_FULL, _LAST = 1, 4


def _read_records(path: Path) -> list[Any]:
    data = Path(path).read_bytes()
    if len(data) < _HEADER:
        return []
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    records, pending, offset = [], b"", _HEADER
    while offset + _HEADER <= len(data):
        room = _BLOCK - offset % _BLOCK
        if room < _HEADER:  # a block's tail too short for a chunk header is padding
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + _HEADER])
        pending += data[offset + _HEADER : offset + _HEADER + length]
        offset += _HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_records(path: Path, timeout: float = 120) -> list[Any]:
    """Every protobuf record of a ``.wandb`` file, in order, once it holds the run's exit record (or
    whatever it holds after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def offline_run(run_dir: Path, timeout: float = 120) -> dict[str, Any]:
    """The run record (name, group, job type, tags), the logged history rows and the final summary."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    run, history, summary = None, [], {}
    for record in wandb_records(path, timeout):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    assert run is not None, f"{path} has no run record"
    return {
        "name": run.display_name,
        "group": run.run_group,
        "job_type": run.job_type,
        "tags": list(run.tags),
        "history": history,
        "summary": summary,
    }


def logged_values(run_dir: Path) -> dict[str, list[Any]]:
    """Key -> every value logged under it (``run.log`` history), in order, from the run's ``.wandb``."""
    values: dict[str, list[Any]] = {}
    for row in offline_run(run_dir)["history"]:
        for key, value in row.items():
            values.setdefault(key, []).append(value)
    return values


def summary_json(records: list[Any]) -> dict[str, str]:
    """The summary updates of ``records`` as raw JSON texts."""
    return {
        _key(item): item.value_json
        for record in records
        if record.WhichOneof("record_type") == "summary"
        for item in record.summary.update
    }
