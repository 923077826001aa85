"""Shared fixtures: the tiny random-weight CLIP and small synthetic datasets (never real data)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from datamodules.synthetic import generate_synthetic_dataset  # noqa: E402
from lightning_modules.clip import TINY_MODEL, create_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return create_clip(TINY_MODEL, None)


@pytest.fixture(scope="session")
def synthetic_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A small source ('industrial') and target ('vivid') dataset in the MVTec AD layout."""
    base = tmp_path_factory.mktemp("synthetic")
    kwargs = dict(seed=3, image_size=32, n_train=1, n_test_good=3, n_test_defect_per_kind=1)
    source = generate_synthetic_dataset(
        base / "industrial", style="industrial", categories=["disc", "weave"], **kwargs
    )
    target = generate_synthetic_dataset(base / "vivid", style="vivid", categories=["ring", "cells"], **kwargs)
    return source.root, target.root


@pytest.fixture(scope="session")
def shared_category_source(tmp_path_factory) -> Path:
    """A second 'industrial' dataset whose category 'disc' has the id of the first source's (training on
    several sources)."""
    root = tmp_path_factory.mktemp("second") / "industrial2"
    generate_synthetic_dataset(
        root,
        style="industrial",
        seed=5,
        categories=["disc", "grain"],
        image_size=32,
        n_train=1,
        n_test_good=2,
        n_test_defect_per_kind=1,
    )
    return root


@pytest.fixture(autouse=True)
def _own_rendezvous_port():
    """Lightning keeps the first free port it finds in ``MASTER_PORT`` for the rest of the process: one DDP
    test that leaves processes behind would hand that port, taken, to every later DDP test. Each test finds
    its own."""
    before = os.environ.get("MASTER_PORT")
    yield
    if before is None:
        os.environ.pop("MASTER_PORT", None)
    else:
        os.environ["MASTER_PORT"] = before
