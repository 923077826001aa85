"""Checkpoints load without running code from them: crafted pickles are refused, zsad's own load."""

from __future__ import annotations

import io
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.errors import ZsadError
from lightning_modules.base import ZeroShotModule
from lightning_modules.checkpoint_io import (
    CorruptCheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
    safe_torch_load,
)
from tests_support import flip_a_bit_in_tensor_data


class _WritesMarker:
    """Unpickling this calls Path.touch: what a crafted checkpoint could do with any function."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_before_any_of_its_code_runs(tmp_path):
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "zsad": _WritesMarker(marker)}, crafted)
    with pytest.raises(UnsafeCheckpointError, match="refused to load") as refused:
        safe_torch_load(crafted)
    assert "pathlib" in str(refused.value) and refused.value.path == str(crafted)
    assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the check above can fail: unrestricted loading runs it
    assert marker.exists()


def test_what_zsad_writes_loads(tmp_path):
    state = {
        "state_dict": {"prompt": torch.randn(3, 4)},
        "zsad": {"method": "anomalyclip", "backbone": {"image_size": 518}, "layers": [6, 12]},
        "epoch": 2,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }
    torch.save(state, tmp_path / "ok.ckpt")
    loaded = safe_torch_load(tmp_path / "ok.ckpt")
    assert torch.equal(loaded["state_dict"]["prompt"], state["state_dict"]["prompt"])
    assert loaded["zsad"] == state["zsad"]
    np.testing.assert_array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


def _plain_pickle(path: Path, value: object) -> None:
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=4)


_FILES = {  # name -> (write it, expected error, what the message says)
    "truncated": (lambda p, d: p.write_bytes(d[: len(d) // 2]), CorruptCheckpointError, "cut short"),
    "bit flip": (None, CorruptCheckpointError, "do not match the CRC-32 stored with them"),
    "empty": (lambda p, d: p.write_bytes(b""), CorruptCheckpointError, "empty"),
    "random bytes": (
        lambda p, d: p.write_bytes(bytes(range(7, 256)) * 9),
        CorruptCheckpointError,
        "re-copy it",
    ),
    "text": (lambda p, d: p.write_text("epoch: 3\nloss: 0.1\n"), NotACheckpointError, "a text file"),
    "npy": (lambda p, d: p.write_bytes(_npy_bytes()), NotACheckpointError, "a NumPy array"),
    "plain pickle": (lambda p, d: _plain_pickle(p, {"w": [1.0]}), NotACheckpointError, "a Python pickle"),
    "pickle asking for code": (
        lambda p, d: _plain_pickle(p, {"w": _WritesMarker(p.parent / "marker")}),
        UnsafeCheckpointError,
        "pathlib",
    ),
}


@pytest.mark.parametrize("kind", list(_FILES))
def test_an_unusable_file_is_named_for_what_it_is(tmp_path, kind):
    write, error, says = _FILES[kind]
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, tmp_path / "full.ckpt")
    path = tmp_path / "file.ckpt"
    if write is None:
        path.write_bytes((tmp_path / "full.ckpt").read_bytes())
        flip_a_bit_in_tensor_data(path)
        assert torch.load(path, weights_only=True)["state_dict"]["w"].shape == (64, 64)  # torch loads it
    else:
        write(path, (tmp_path / "full.ckpt").read_bytes())
    with pytest.raises(error, match=re.escape(says)) as refused:
        safe_torch_load(path)
    assert str(refused.value).startswith(
        (f"{path} ", f"refused to load {path}")
    ) and refused.value.path == str(path)
    assert "\n" not in str(refused.value) and not (tmp_path / "marker").exists()


def test_zsad_test_weights_loading_refuses_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"state_dict": {}, "zsad": _WritesMarker(marker)}, tmp_path / "crafted.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="nothing of it was run"):
        ZeroShotModule().load_trained_weights(str(tmp_path / "crafted.ckpt"))
    assert not marker.exists()


def test_another_methods_checkpoint_names_that_method(tmp_path):
    torch.save({"state_dict": {}, "zsad": {"method": "vand"}}, tmp_path / "vand.ckpt")
    with pytest.raises(ZsadError, match="is a checkpoint of method 'vand', not of '\\?'"):
        ZeroShotModule().load_trained_weights(str(tmp_path / "vand.ckpt"))
