"""Reading an offline W&B run back: the records of its ``run-*.wandb`` file, decoded with wandb's own
protobuf messages (``wandb.proto``). The file is a LevelDB-style log: a 7-byte file header, then in
32 KiB blocks chunks of (crc32, length, type) + data; FIRST/MIDDLE/LAST chunks make one record."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _finished_records(path: Path, timeout: float) -> list[wandb_internal_pb2.Record]:
    """wandb-core writes the file in its own process, a moment after ``finish()`` returns: wait for the
    run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(path) if path.stat().st_size >= HEADER else []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def offline_run(run_dir: Path, timeout: float = 120) -> dict[str, Any]:
    """The run record (name, group, job type, tags), the logged history rows and the final summary."""
    (path,) = run_dir.glob("run-*.wandb")
    run, history, summary = None, [], {}
    for record in _finished_records(path, timeout):
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
