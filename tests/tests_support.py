"""Helpers shared by several test modules (importable because tests/ is on sys.path via rootdir conftest)."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_modules.anomalyclip import AnomalyCLIPConfig, AnomalyCLIPModule
from lightning_modules.clip.config import BackboneConfig
from pipelines import runner


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


def tiny_anomalyclip_config(config_class: type = AnomalyCLIPConfig, **overrides) -> AnomalyCLIPConfig:
    """AnomalyCLIP (or another method on its code: ``config_class``, e.g. FAPromptConfig) on the tiny
    random-weight CLIP at 32 px (DPAM on blocks 2..6, maps from block 6)."""
    cfg = config_class(
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


def authors_prompt_learner(module: AnomalyCLIPModule, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict named and shaped as the authors' AnomalyCLIP_PromptLearner (prompt_ensemble.py) for
    n_ctx = prompt_length, t_n_ctx = deep_prompt_length, depth = number of deep blocks + 1; random values."""
    g = torch.Generator().manual_seed(seed)
    cfg, width = module.cfg, module.model.text.width
    n, k, depth = cfg.prompt_length, cfg.deep_prompt_length, len(cfg.deep_prompt_blocks) + 1
    tokens = module.model.prompts.token_ids
    length = tokens.shape[1]
    state = {
        "ctx_pos": torch.randn(1, 1, n, width, generator=g),
        "ctx_neg": torch.randn(1, 1, n, width, generator=g),
        **{f"compound_prompts_text.{j}": torch.randn(k, width, generator=g) for j in range(depth - 1)},
        "token_prefix_pos": torch.randn(1, 1, 1, width, generator=g),
        "token_suffix_pos": torch.randn(1, 1, length - 1 - n, width, generator=g),
        "token_prefix_neg": torch.randn(1, 1, 1, width, generator=g),
        "token_suffix_neg": torch.randn(1, 1, length - 1 - n, width, generator=g),
        "tokenized_prompts_pos": tokens[0].reshape(1, 1, -1).int(),
        "tokenized_prompts_neg": tokens[1].reshape(1, 1, -1).int(),
    }
    for j in range(depth - 1):  # Linear(ctx_dim, 896) per deep block, unused by their forward
        state[f"compound_prompt_projections.{j}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{j}.bias"] = torch.randn(896, generator=g)
    return state


def flip_a_bit_in_tensor_data(path: Path, record: str = "/data/0") -> None:
    """One bit of a tensor's bytes inside a ``torch.save`` archive (the first tensor by default), as a
    storage fault would: the file still loads with ``torch.load``, with one value changed."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(record))
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_length + extra_length + min(5, info.file_size - 1)] ^= 0x10
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``64k``) at ``folder``: a filesystem that really fills up. Needs root;
    the test is skipped where it cannot be mounted."""
    folder.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


# --- stopping a training from inside it ------------------------------------------------------------
class SendAt(Callback):
    """Sends ``signum`` to this process (global rank 0) after training batch ``batch`` of ``epoch``, or
    raises ``RuntimeError`` there when ``signum`` is None (a crash: nothing saved on the way out). With
    ``to_wandb`` the W&B service process gets it too, as when SLURM signals every process of a job."""

    def __init__(self, epoch: int, batch: int, signum: int | None, to_wandb: bool = False) -> None:
        self.epoch, self.batch, self.signum, self.to_wandb = epoch, batch, signum, to_wandb

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch) or not trainer.is_global_zero:
            return
        if self.signum is None:
            raise RuntimeError("simulated node failure")
        if self.to_wandb:
            for pid in wandb_service_pids():
                os.kill(pid, self.signum)
        os.kill(os.getpid(), self.signum)


def wandb_service_pids() -> list[int]:
    pids = []
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat, cmdline = (child / "stat").read_text(), (child / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"wandb-core" in cmdline:
            pids.append(int(child.name))
    assert pids, "no W&B service process found"
    return pids


MAKE_TRAINER = runner.make_trainer  # the real one, whatever a test patches in


def make_trainer_with(event: SendAt | None, built: list[bool]):
    def make_trainer(cfg, run_dir, loggers, training, **kwargs):
        built.append(training)
        if training and event is not None:
            kwargs["callbacks"] = [event, *(kwargs.get("callbacks") or [])]
        return MAKE_TRAINER(cfg, run_dir, loggers, training, **kwargs)

    return make_trainer


def interrupt_training_at(monkeypatch, event: SendAt | None) -> list[bool]:
    """Adds ``event`` to the training Trainer of the next runs; returns the ``training`` flag of every
    Trainer built."""
    built: list[bool] = []
    monkeypatch.setattr(runner, "make_trainer", make_trainer_with(event, built))
    return built
