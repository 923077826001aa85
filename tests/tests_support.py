"""Helpers shared by several test modules (importable because tests/ is on sys.path via rootdir conftest)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lightning_modules.anomalyclip import AnomalyCLIPConfig
from lightning_modules.clip.config import BackboneConfig


def quiet_trainer(**settings) -> L.Trainer:
    """A CPU Trainer without logger, progress bar, model summary or checkpoints; ``settings`` override."""
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    return L.Trainer(**{**defaults, **settings})


def tiny_anomalyclip_config(**overrides) -> AnomalyCLIPConfig:
    """AnomalyCLIP on the tiny random-weight CLIP at 32 px (DPAM on blocks 2..6, maps from block 6)."""
    cfg = AnomalyCLIPConfig(
        backbone=BackboneConfig(name="zsad-tiny-vit", pretrained=None, image_size=32),
        dpam_start_block=2,
        map_layers=[6],
        gaussian_sigma=1.0,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def zsad_test_from_run(experiment: Path, trained_run: Path, out_dir: Path, overrides: list[str]) -> int:
    """Exit code of ``zsad test EXPERIMENT`` with the last checkpoint of ``trained_run``, writing to ``out_dir``."""
    from pipelines.cli import main

    checkpoint = Path(trained_run) / "checkpoints" / "last.ckpt"
    return main(["test", str(experiment), *overrides, f"checkpoint={checkpoint}", f"run_dir={out_dir}"])
