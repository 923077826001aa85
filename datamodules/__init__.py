"""Benchmarks: raw-layout parsers into one index, a torch dataset and a LightningDataModule.

Imports are lazy so that light commands (``zsad data synth``) do not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnomalyDataModule": "datamodules.datamodule",
    "DataConfig": "datamodules.config",
    "DatasetIndex": "datamodules.index",
    "DatasetSpec": "datamodules.index",
    "SampleRecord": "datamodules.index",
    "build_index": "datamodules.index",
    "dataset_names": "datamodules.index",
    "get_dataset_spec": "datamodules.index",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
