"""MPDD: MVTec AD layout, parsed by the shared MVTec parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.index import build_index
from datamodules.parsers.common import DatasetLayoutProblems


def test_index(fake_mpdd: Path) -> None:
    index = build_index("mpdd", fake_mpdd)
    assert index.categories() == ["bracket_black", "tubes"]
    assert index.select(split="test").counts() == {
        "bracket_black": {"normal": 2, "anomalous": 4},
        "tubes": {"normal": 2, "anomalous": 2},
    }
    assert index.prompt_names()["bracket_black"] == "bracket_black"
    assert all(r.mask_path is not None for r in index.records if r.label)


def test_batch_loads(fake_mpdd: Path, batch_of) -> None:
    batch_of("mpdd", fake_mpdd)


def test_missing_mask(fake_mpdd: Path) -> None:
    (fake_mpdd / "tubes" / "ground_truth" / "anomalous" / "001_mask.png").unlink()
    with pytest.raises(
        DatasetLayoutProblems, match="no mask for anomalous image .*tubes/test/anomalous/001.png"
    ):
        build_index("mpdd", fake_mpdd)
