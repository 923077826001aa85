"""Helpers of the AnoVL / dual-image tests (importable because tests/ is on sys.path via the root conftest)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.registry import get_method
from pipelines.config import find_config


def tiny_method_config(name: str, **overrides: Any) -> Any:
    """The typed config of ``configs/method/{name}.yaml`` (e.g. ``dual_image_tiny``) with dotted overrides."""
    body = OmegaConf.load(find_config("method", name))
    node = OmegaConf.merge(OmegaConf.structured(get_method(str(body.name)).config_class), body)
    for key, value in overrides.items():
        OmegaConf.update(node, key, value, merge=True)
    return OmegaConf.to_object(node)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models on shared CPUs: one thread avoids oversubscription (10x faster under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
