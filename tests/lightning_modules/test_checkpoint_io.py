"""Checkpoints load without running code from them: crafted pickles are refused, zsad's own load."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.base import ZeroShotModule
from lightning_modules.checkpoint_io import UnsafeCheckpointError, safe_torch_load


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


def test_a_truncated_checkpoint_is_a_read_error_not_a_refusal(tmp_path):
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises((RuntimeError, OSError)):  # torch's own read error, whichever it is
        safe_torch_load(tmp_path / "cut.ckpt")


def test_zsad_test_weights_loading_refuses_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"state_dict": {}, "zsad": _WritesMarker(marker)}, tmp_path / "crafted.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="nothing of it was run"):
        ZeroShotModule().load_trained_weights(str(tmp_path / "crafted.ckpt"))
    assert not marker.exists()
