"""Typed config of one dataset as used in an experiment (a source or a target)."""

from __future__ import annotations

import dataclasses

from omegaconf import MISSING


@dataclasses.dataclass
class DataConfig:
    name: str = MISSING  # registered dataset name (`zsad data list`)
    root: str = MISSING  # raw dataset folder; configs/data/*.yaml derive it from ${data_root}
    categories: list[str] | None = None  # None: every category found under root
    # Parser options (`zsad data list` shows them), e.g. covid: {anomalous: "COVID,Viral Pneumonia"}
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    # Zero-shot protocol: the auxiliary training data is the *test* split of the source dataset.
    train_split: str = "test"
    test_split: str = "test"
    # A few-shot training set (a source only): train_shots/2 normal and train_shots/2 anomalous images per
    # category of train_split, drawn at random with train_shots_seed (AA-CLIP's --training_mode few_shot;
    # the draw is a reconstruction, datamodules/training_shots.py). None: the whole split.
    train_shots: int | None = None
    train_shots_seed: int = 0
    eval_size: int | None = None  # resolution of masks/maps for metrics; None: the model's input size
    # Preprocessing: unset (None) keys follow the method's official code (MethodSpec.preprocessing,
    # datamodules.transforms.ImagePreprocessing, docs/datasets.md "Preprocessing"); a value overrides it.
    resize_backend: str | None = None  # "pil" (AnomalyCLIP, VAND, AnoVL) or "tensor" (anomalib's WinCLIP)
    interpolation: str | None = None  # image resize: "bicubic" or "bilinear" (AnoVL, Dual-Image)
    antialias: bool | None = None  # False only with resize_backend=tensor
    mask_interpolation: str | None = None  # "bilinear" then > mask_threshold (official) or "nearest"
    mask_threshold: float | None = None  # official: 0.5
    high_bit_depth: str | None = None  # 16-bit images: "clip" at 255 (official) or "scale" to 8 bits
    rgb_before_resize: bool | None = None  # convert("RGB") before the PIL resize (AdaCLIP) or after
    batch_size: int = 8
    eval_batch_size: int = 8
    # DataLoader worker processes per training process; None: as many as the CPU cores this process may use
    # allow (datamodules.datamodule.auto_num_workers), at most 8
    num_workers: int | None = None
    pin_memory: bool = True
    hflip_p: float = 0.0
