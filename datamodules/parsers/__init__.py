"""Parsers of the benchmarks' raw layouts; importing this package registers them all."""

from datamodules.parsers import mvtec, synthetic  # noqa: F401
