"""DTD-Synthetic: MVTec AD layout with test/{good,bad}."""

from __future__ import annotations

from pathlib import Path

from datamodules.index import build_index, get_dataset_spec


def test_index(fake_dtd: Path) -> None:
    index = build_index("dtd", fake_dtd)
    assert index.categories() == ["Blotchy_099", "Woven_001"]
    assert index.select(split="test").counts()["Blotchy_099"] == {"normal": 2, "anomalous": 3}
    assert {r.defect_type for r in index.records if r.label} == {"bad"}
    assert index.prompt_names()["Woven_001"] == "Woven_001"


def test_batch_loads(fake_dtd: Path, batch_of) -> None:
    batch_of("dtd", fake_dtd)


def test_only_total_counts_known() -> None:
    spec = get_dataset_spec("dtd")
    assert spec.expected_counts("official") is None and spec.expected_total("official") == (357, 947)
    assert not spec.counts_verified
