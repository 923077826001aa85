"""Writing small sweeps over the synthetic datasets (shared by the sweep and SLURM tests)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_sweep(
    tmp_path: Path,
    source: Path,
    target: Path,
    seeds: list[int],
    epochs: int = 1,
    extra: dict | None = None,
    name: str = "s",
) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for key, root in (("src", source), ("tgt", target)):
        (data / f"{key}.yaml").write_text(
            f"name: synthetic\nroot: {root}\nbatch_size: 4\neval_batch_size: 8\nnum_workers: 0\n"
        )
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        f"defaults:\n  method: anomalyclip_tiny\n  source: {data / 'src.yaml'}\n  targets: [{data / 'tgt.yaml'}]\n"
        "name: sweep_test\ntrainer: {accelerator: cpu, devices: '1', enable_progress_bar: false, log_every_n_steps: 1}\n"
    )
    sweep = {
        "name": name,
        "experiment": str(experiment),
        "grid": {"seed": seeds},
        "overrides": [
            f"trainer.max_epochs={epochs}",
            "logger.wandb.mode=disabled",
            "method.backbone.image_size=32",
        ],
        "output_dir": str(tmp_path / "sweeps"),
        "slurm": {
            "gpus_per_node": 0,
            "cpus_per_task": 1,
            "time": "00:15:00",
            "max_concurrent": 2,
            "partition": "debug",
        },
        **(extra or {}),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path
