"""Benchmarks: raw-layout parsers into one index, a torch dataset and a LightningDataModule."""

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.index import DatasetIndex, DatasetSpec, SampleRecord, build_index, dataset_names, get_dataset_spec

__all__ = [
    "AnomalyDataModule",
    "DataConfig",
    "DatasetIndex",
    "DatasetSpec",
    "SampleRecord",
    "build_index",
    "dataset_names",
    "get_dataset_spec",
]
