"""Run files: atomic writes (concurrent writers never collide, failures leave no temp file and no torn
file) and what results.json, results.csv and the printed table say."""

from __future__ import annotations

import csv
import errno
import io
import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from datamodules.atomic_io import atomic_write, atomic_write_text
from datamodules.errors import WriteFailedError
from lightning_modules.metrics import EvaluationResult, aupro, legacy_cflow_aupro
from pipelines.results import csv_text, format_table, target_payload
from tests_support import mounted_tmpfs


def _payload(writer: str, i: int) -> str:
    # large enough (~40 KiB) that a torn or interleaved file could not parse
    return json.dumps({"writer": writer, "i": i, "rows": [[writer, i, k] for k in range(2000)]})


def _write_many(path: str, writer: str, n: int) -> None:
    for i in range(n):
        atomic_write_text(Path(path), _payload(writer, i))


def test_concurrent_writers_threads_and_processes_never_tear_a_file(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, _payload("start", 0))
    n = 100
    errors: list[BaseException] = []
    reads = 0
    done = threading.Event()

    def write(name: str) -> None:
        try:
            _write_many(str(path), name, n)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    def read() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                data = json.loads(path.read_text())
                assert len(data["rows"]) == 2000
                reads += 1
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)
                return

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_many, args=(str(path), f"p{k}", n)) for k in range(4)]
    threads = [threading.Thread(target=write, args=(f"t{k}",)) for k in range(4)]
    reader = threading.Thread(target=read)
    for worker in (*processes, reader, *threads):  # fork before any thread runs
        worker.start()
    for thread in threads:
        thread.join(timeout=300)
    for process in processes:
        process.join(timeout=300)
    done.set()
    reader.join(timeout=60)
    assert not errors, errors[:3]
    assert [process.exitcode for process in processes] == [0] * 4
    assert reads > 0
    final = json.loads(path.read_text())
    assert final["i"] == n - 1  # the last write of some writer
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, where):
    path = tmp_path / "results.json"
    atomic_write_text(path, '{"old": true}\n')
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", _no_space)
    elif where == "rename":
        monkeypatch.setattr(os, "replace", _no_space)

    def write(handle) -> None:
        handle.write(b'{"new": ')
        if where == "write":
            _no_space()
        handle.write(b"true}\n")

    with pytest.raises(WriteFailedError) as failed:
        atomic_write(path, write)
    message = str(failed.value)
    assert message.startswith(f"cannot write results.json in {tmp_path}: No space left on device (ENOSPC);")
    assert " free there" in message and "\n" not in message
    assert failed.value.path == str(path)
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_other_errors_also_remove_the_temp_file(tmp_path):
    def write(handle) -> None:
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.json", write)
    assert list(tmp_path.iterdir()) == []


def test_files_get_the_usual_permissions(tmp_path):
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root; skipped elsewhere, the injected ENOSPC above always runs)."""
    with mounted_tmpfs(tmp_path / "tmpfs", "64k") as mount:
        yield mount


def test_a_full_disk_is_one_clear_error_and_the_old_file_survives(small_tmpfs):
    path = small_tmpfs / "results.json"
    atomic_write_text(path, '{"old": true}\n')
    with pytest.raises(WriteFailedError, match=r"No space left on device \(ENOSPC\); [\d.]+ \w+ free there"):
        atomic_write_text(path, "x" * 200_000)
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in small_tmpfs.iterdir()] == ["results.json"]


def _category(rng, long_tail: bool) -> tuple[np.ndarray, np.ndarray]:
    """20 maps of 64 x 64 px: smooth noise, a disc on every second image scored higher; ``long_tail``:
    the scores exponentiated twice over (a few very high scores stretch the cflow AUPRO's thresholds)."""
    maps, masks = [], []
    yy, xx = np.ogrid[:64, :64]
    for i in range(20):
        mask = (yy - 20 - i) ** 2 + (xx - 40) ** 2 <= 36 if i % 2 else np.zeros((64, 64), bool)
        noise = ndimage.gaussian_filter(rng.normal(size=(64, 64)), 4)
        score = noise / noise.std() + 3 * ndimage.gaussian_filter(mask.astype(float), 2)
        maps.append(np.exp(2 * score) if long_tail else score)
        masks.append(mask)
    return np.stack(maps).astype(np.float32), np.stack(masks)


def test_far_apart_aupros_are_flagged_in_results_and_the_printed_table():
    rng = np.random.default_rng(0)
    per_category = {}
    for name, long_tail in (("smooth", False), ("long_tail", True)):
        maps, masks = _category(rng, long_tail)
        per_category[name] = {"aupro": aupro(maps, masks), "aupro_cflow": legacy_cflow_aupro(maps, masks)}
    smooth, tail = per_category["smooth"], per_category["long_tail"]
    assert abs(smooth["aupro"] - smooth["aupro_cflow"]) < 0.01  # the grid resolves these maps
    assert tail["aupro"] - tail["aupro_cflow"] > 0.3  # a few high scores leave it too coarse
    per_category["zero"] = {"aupro": 0.0, "aupro_cflow": -0.0}
    evaluation = EvaluationResult.from_categories(per_category, {})
    payload = target_payload("synthetic", {}, evaluation, {})
    assert "aupro_warning" not in payload["categories"]["smooth"]
    warning = payload["categories"]["long_tail"]["aupro_warning"]
    assert warning.startswith(
        f"AUPRO cflow {100 * tail['aupro_cflow']:.1f} vs exact {100 * tail['aupro']:.1f}"
    )
    assert "more than 5.0 points apart" in warning and "200 evenly spaced thresholds" in warning
    rows = {r["category"]: r for r in csv.DictReader(io.StringIO(csv_text({"targets": {"s": payload}})))}
    assert rows["long_tail"]["aupro_warning"] == warning and rows["smooth"]["aupro_warning"] == ""
    table = format_table({"targets": {"s": payload}}).splitlines()
    (flagged,) = [line for line in table if line.startswith("s  ") and line.rstrip().endswith("!")]
    assert "long_tail" in flagged and table[-1] == f"! s/long_tail: {warning}"
    assert "-0.0" not in "\n".join(table)  # a -0.0 prints as 0.0


def test_extra_metrics_are_new_keys_and_columns_only_where_a_target_has_them() -> None:
    """Real-IAD's sample-level columns and sPRO extend results.json/csv; other targets keep their schema."""
    from lightning_modules.metrics import METRIC_NAMES, EvaluationResult
    from pipelines.results import CSV_COLUMNS, csv_text, format_table, target_payload

    plain = EvaluationResult.from_categories({"a": dict.fromkeys(METRIC_NAMES, 0.5)}, {})
    extended = EvaluationResult.from_categories(
        {"b": {**dict.fromkeys(METRIC_NAMES, 0.5), "sample_auroc": 0.75, "spro": 0.25}},
        {},
        extra_metrics=("sample_auroc", "spro"),
    )
    counts = {"a": {"normal": 1, "anomalous": 1}, "b": {"normal": 1, "anomalous": 1}}
    first = target_payload("mvtec", counts, plain, {})
    assert list(first["mean"]) == list(METRIC_NAMES)  # unchanged schema
    second = target_payload("realiad", counts, extended, {})
    assert second["categories"]["b"]["sample_auroc"] == 0.75 and second["mean"]["spro"] == 0.25
    header = csv_text({"targets": {"mvtec": first}}).splitlines()[0]
    assert header == ",".join(CSV_COLUMNS)
    lines = csv_text({"targets": {"mvtec": first, "realiad": second}}).splitlines()
    assert lines[0] == ",".join((*CSV_COLUMNS, "sample_auroc", "spro"))
    assert lines[1].endswith(",,") and lines[3].endswith(",0.75,0.25")  # mvtec row empty, realiad filled
    table = format_table({"targets": {"realiad": second}})
    assert "S AUROC" in table and "sPRO" in table and "75.0" in table
