"""Cached frozen image features for methods whose image encoder does not train (AnomalyCLIP, VAND, CoOp).

Why: these methods train only prompts or small heads, so the frozen image encoder returns the same
features for a training image in every epoch. Encoding (and decoding + resizing the image file) once per
dataset and resolution, then training on the stored features, makes every later step cost only the
trainable part (docs/methods.md#anomalyclip, `cache_features`).

How it fits Lightning (the datamodule owns ``train_dataloader``), one way, from the runner to the datamodule:

1. For a method whose spec has a ``feature_cache`` (``MethodSpec.feature_cache``: the config's settings), the
   runner adds a :class:`CachedTraining` callback with the source datamodule to the fit. Its ``on_fit_start``
   (inside the fit: the processes, the device and the precision exist; before the module's hook and the
   first batch) calls :func:`prepare_cached_training`. It asks the module
   whether caching applies (:meth:`FeatureCacheSource.feature_cache_bypass_reason`: e.g. VAND's mosaic
   or a random flip changes the image every epoch, so the cache is bypassed and the reason logged once).
2. It builds a :class:`FeatureTable`: one pass over the training split in index order, batched, without
   gradients and under the trainer's precision context, storing for each sample the module's features
   (:meth:`FeatureCacheSource.encode_for_cache`, in the model's own dtype, on the CPU) plus label,
   category, ``has_mask`` and the mask (bool). The table is keyed by a hash of everything that changes
   it (:func:`cache_identity`); with ``cache_dir`` it is also saved there and reused by later runs.
   The pass runs inside ``torch.random.fork_rng``: the global RNG is untouched.
   Under DDP each process encodes only its share of the split and the shares are gathered, so every
   process holds the whole table (its sampler may ask for any sample) after ``1 / world_size`` of the work.
3. The datamodule is handed a :class:`CachedFeatureDataset` (``use_cached_train_features``) and its
   ``train_dataloader`` then iterates over it: same batch size, same (seed, epoch) order
   (``datamodules.resumable``), so each epoch visits the samples in the same order as the uncached path; no
   image is decoded and no encoder runs. Batches carry ``batch["features"]`` instead of ``batch["image"]``
   and the module's ``training_step`` uses them in place of its encoder output.

The only difference to the uncached path is batch composition inside the encoder (features computed in
batches of ``eval_batch_size`` in index order instead of the shuffled training batches), which changes
floating-point results at round-off level only; tests check "same seed -> same learned parameters".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.atomic_io import atomic_torch_save
from datamodules.progress import progress
from lightning_modules.checkpoint_io import safe_torch_load
from lightning_modules.method_spec import CacheSettings

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the stored layout changes


class FeatureCacheSource(Protocol):
    """What a LightningModule provides to have its frozen features cached (its spec has ``feature_cache``)."""

    method_name: str  # names the saved table's file
    device: torch.device  # where it encodes

    def feature_cache_identity(self) -> dict[str, Any]:
        """Everything of the *model* that changes the features (backbone, weights, input size, layers...)."""

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen features of a batch: name -> tensor with the batch as first dimension (no gradients)."""

    def feature_cache_bypass_reason(self) -> str | None:
        """Why the cache cannot be used for this run (e.g. an augmentation that changes every epoch), or None."""


def weights_identity(pretrained: str | None) -> dict[str, Any]:
    """Identifies the weights: a pretrained tag as is; a local file by resolved path, size and mtime."""
    if pretrained is None:
        return {"weights": None}
    path = Path(os.path.expanduser(str(pretrained)))
    if path.is_file():
        stat = path.stat()
        return {"weights": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"weights": str(pretrained)}


def backbone_cache_identity(backbone: Any) -> dict[str, Any]:
    """The backbone fields that change image features (not ``cache_dir``: where weights are found)."""
    return {
        "name": backbone.name,
        **weights_identity(backbone.pretrained),
        "image_size": int(backbone.image_size),
        "pos_embed_interpolation": backbone.pos_embed_interpolation,
    }


def cache_key(identity: dict[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_identity(module: Any, datamodule: Any) -> dict[str, Any]:
    """Model identity + data identity (dataset, root, split, categories, transform) + precisions + format."""
    trainer = getattr(module, "_trainer", None)
    precision = str(getattr(trainer, "precision", "32-true")) if trainer is not None else "32-true"
    return {
        "format": CACHE_FORMAT,
        "model": module.feature_cache_identity(),
        "data": datamodule.train_cache_identity(),
        "precision": precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # TF32/bf16 products change features
        "torch": torch.__version__.split("+")[0],
    }


@dataclasses.dataclass
class FeatureTable:
    """Per-sample frozen features of one training split, row ``i`` = sample ``i`` of the split's index."""

    key: str
    identity: dict[str, Any]
    features: dict[str, torch.Tensor]  # name -> [N, ...] in the model's dtype (CPU)
    masks: torch.Tensor  # [N, H, W] bool at the evaluation size
    labels: torch.Tensor  # [N] long
    category_ids: torch.Tensor  # [N] long
    has_mask: torch.Tensor  # [N] bool
    image_paths: list[str]

    def __len__(self) -> int:
        return len(self.image_paths)

    def nbytes(self) -> int:
        tensors = [*self.features.values(), self.masks, self.labels, self.category_ids, self.has_mask]
        return sum(t.numel() * t.element_size() for t in tensors)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "key": self.key,
            "identity": json.dumps(self.identity, sort_keys=True, default=str),
            "features": self.features,
            "masks": self.masks,
            "labels": self.labels,
            "category_ids": self.category_ids,
            "has_mask": self.has_mask,
            "image_paths": self.image_paths,
        }
        atomic_torch_save(payload, path)  # concurrent runs (or DDP ranks) never read a half-written file

    @classmethod
    def load(cls, path: Path) -> FeatureTable:
        """Memory-mapped: the OS shares the pages among the processes reading the same file (the ranks of a
        DDP run, concurrent runs of a sweep on one node). Every record is checked against the CRC-32 that
        ``torch.save`` stored with it before it is used (:func:`~lightning_modules.checkpoint_io.verify_checksums`:
        one read of the file, which also brings its pages into the page cache)."""
        payload = safe_torch_load(path, mmap=True)  # its CRC-32s checked first: a damaged table is refused
        payload["identity"] = json.loads(payload["identity"])
        return cls(**payload)


class CachedFeatureDataset(Dataset):
    """Training items from a :class:`FeatureTable`: like ``AnomalyDataset`` items, with ``features``
    (name -> tensor) in place of ``image``; masks come back as float {0, 1} as the image path gives them."""

    def __init__(self, table: FeatureTable) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.table
        return {
            "features": {name: values[i] for name, values in t.features.items()},
            "mask": t.masks[i].float(),
            "label": t.labels[i],
            "category_id": t.category_ids[i],
            "sample_id": torch.tensor(i, dtype=torch.long),
            "has_mask": t.has_mask[i],
            "image_path": t.image_paths[i],
        }


def _rng_untouched(device: torch.device) -> Any:
    """A block after which the global RNG (CPU and ``device``) is as before: shuffling is not shifted."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def _encode(
    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    context: Callable[[], Any] | None,
) -> dict[str, torch.Tensor]:
    """``encode(images)`` under the trainer's precision ``context`` when one is given."""
    with context() if context is not None else contextlib.nullcontext():
        return encode(images)


class Collective(Protocol):
    """The part of a Lightning strategy a sharded build needs (``trainer.strategy`` provides it)."""

    global_rank: int
    world_size: int

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` ([B, ...], same shape on every process) of all processes: [world_size, B, ...]."""


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """Process ``rank``'s share of ``range(count)``: every ``world_size``-th index from ``rank``, padded with
    ``count - 1`` so that all processes get ``ceil(count / world_size)`` items (the same batches)."""
    per_process = -(-count // world_size)
    return [min(rank + world_size * i, count - 1) for i in range(per_process)]


def _gather_shares(value: torch.Tensor, collective: Collective | None, device: torch.device) -> torch.Tensor:
    """This process's ``value`` ([B, ...]) with those of the others: [world_size, B, ...] on the CPU.
    Sent from ``device`` (NCCL gathers CUDA tensors only), bool as uint8 (not every backend sends bool)."""
    if collective is None or collective.world_size == 1:
        return value.detach().to("cpu")[None]
    value = value.to(device, non_blocking=True)
    return collective.all_gather(value.to(torch.uint8) if value.dtype == torch.bool else value).to("cpu")


@torch.no_grad()
def build_feature_table(
    dataset: Dataset,
    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    key: str,
    identity: dict[str, Any],
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    num_workers: int = 0,
    context: Callable[[], Any] | None = None,
    collective: Collective | None = None,
) -> FeatureTable:
    """Encode every sample of ``dataset`` (an ``AnomalyDataset``) once, batched, into a table in index order.

    With a ``collective`` of several processes (DDP), each process encodes only its share
    (:func:`shard_indices`) and the shares are gathered batch by batch, so every process ends with the
    whole table after encoding ``1 / world_size`` of the images. The global RNG state is restored
    afterwards, so the training run that follows shuffles exactly as it would have without this pass.
    """
    device = torch.device(device)
    count = len(dataset)
    world = collective.world_size if collective is not None else 1
    rank = collective.global_rank if collective is not None else 0
    share = Subset(dataset, shard_indices(count, rank, world)) if world > 1 else dataset
    loader = DataLoader(
        share,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    columns: dict[
        str, torch.Tensor
    ] = {}  # "feature:<name>" and the per-sample fields, [count, ...] on the CPU
    done = 0  # rows of this process's share encoded so far
    with _rng_untouched(device):
        for batch in progress(loader, "zsad feature cache: encoding", unit="batch"):
            encoded = _encode(encode, batch["image"].to(device, non_blocking=True), context)
            fields = {f"feature:{name}": value for name, value in encoded.items()}
            fields |= {
                "masks": batch["mask"] > 0.5,
                "labels": batch["label"].long(),
                "category_ids": batch["category_id"].long(),
                "has_mask": batch["has_mask"].bool(),
            }
            size = len(batch["label"])
            # row of share position p on process w: w + world * p; padding rows (>= count) are dropped
            rows = torch.arange(world)[:, None] + world * torch.arange(done, done + size)[None, :]
            keep = rows < count
            for name, value in fields.items():
                shares = _gather_shares(value, collective, device)
                if name not in columns:
                    columns[name] = torch.empty((count, *value.shape[1:]), dtype=value.dtype)
                columns[name][rows[keep]] = shares[keep].to(value.dtype)
            done += size
    return FeatureTable(
        key=key,
        identity=identity,
        features={name.split(":", 1)[1]: v for name, v in columns.items() if name.startswith("feature:")},
        masks=columns["masks"],
        labels=columns["labels"],
        category_ids=columns["category_ids"],
        has_mask=columns["has_mask"],
        image_paths=[str(record.image_path) for record in dataset.records],
    )


def available_memory_bytes() -> int | None:
    """Memory the OS can still hand out (``MemAvailable``: free plus reclaimable cache), None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@torch.no_grad()
def estimate_table_bytes(
    dataset: Dataset,
    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    device: torch.device,
    context: Callable[[], Any] | None = None,
) -> int:
    """Bytes a feature table of ``dataset`` will take, from the features of its first sample."""
    with _rng_untouched(device):
        sample = dataset[0]
        encoded = _encode(encode, sample["image"][None].to(device), context)
    per_sample = sum(v[0].numel() * v.element_size() for v in encoded.values()) + sample["mask"].numel()
    return per_sample * len(dataset)


def memory_limit_reason(table_bytes: int, max_gb: float | None, processes: int) -> str | None:
    """Why a table of ``table_bytes`` should not be kept in memory by each of ``processes`` processes on
    this machine, or None if it fits: above ``max_gb`` (per process) when set, else above half of the
    memory available now, shared by the processes."""
    gib = table_bytes / 2**30
    if max_gb is not None:
        if table_bytes > max_gb * 2**30:
            return (
                f"the feature table would take {gib:.1f} GiB per process, above method.cache_max_gb={max_gb}"
            )
        return None
    available = available_memory_bytes()
    if available is not None and table_bytes * processes > available / 2:
        return (
            f"the feature table would take {gib:.1f} GiB per process x {processes} process(es), more than half "
            f"of the {available / 2**30:.1f} GiB available (raise method.cache_max_gb to force it)"
        )
    return None


def _load_matching_table(file: Path, key: str, image_paths: list[str]) -> FeatureTable | None:
    """The table saved at ``file`` if it exists and was built for ``key`` from exactly ``image_paths``."""
    if not file.is_file():
        return None
    try:
        table = FeatureTable.load(file)
    except Exception as error:  # noqa: BLE001 - a stale or corrupt cache file is rebuilt, never fatal
        log.warning("zsad: not using the feature cache %s: %s; it is rebuilt", file, error)
        return None
    return table if table.key == key and table.image_paths == image_paths else None


def _bypass(reason: str) -> str:
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info(f"zsad feature cache not used: {reason}")
    return f"bypassed: {reason}"


def prepare_cached_training(
    source: FeatureCacheSource, datamodule: Any, trainer: Any, settings: CacheSettings
) -> tuple[FeatureTable | None, str]:
    """Build (or load) the training split's feature table and make ``datamodule`` serve it; returns the table
    (None when the cache is off or bypassed, the reason logged once) and the status. A table that would have
    to be built and would not fit in memory (see :func:`memory_limit_reason`) is bypassed too; all processes
    of a run take the same decision. A table loaded from ``settings.cache_dir`` is memory-mapped (pages shared
    by the node's processes, paged in on demand), so it is not held to that limit."""
    from lightning.pytorch.utilities import rank_zero_info

    if not settings.enabled:
        return None, "off"
    reason = source.feature_cache_bypass_reason() or datamodule.train_cache_bypass_reason()
    if reason:
        datamodule.use_cached_train_features(None)
        return None, _bypass(reason)

    identity = cache_identity(source, datamodule)
    key = cache_key(identity)
    current = datamodule.cached_train_features
    if current is not None and current.table.key == key:
        return current.table, "cached (in memory)"

    dataset = datamodule.train_dataset()
    context = trainer.precision_plugin.train_step_context  # as around training_step
    name = getattr(source, "method_name", "features")
    file = Path(settings.cache_dir) / f"{name}-{key}.pt" if settings.cache_dir else None
    paths = [str(record.image_path) for record in dataset.records]
    table = _load_matching_table(file, key, paths) if file is not None else None
    # Loading or building is one decision under DDP (the build is collective): if a process could not load
    # the file, all build.
    if not trainer.strategy.reduce_boolean_decision(table is not None, all=True):
        table = None
    if table is not None:
        status = f"cached (loaded {file})"
    else:
        table_bytes = estimate_table_bytes(dataset, source.encode_for_cache, source.device, context)
        processes_here = max(1, int(getattr(trainer, "num_devices", 1)))
        too_big = memory_limit_reason(table_bytes, settings.max_gb, processes_here)
        if not trainer.strategy.reduce_boolean_decision(too_big is None, all=True):
            datamodule.use_cached_train_features(None)
            return None, _bypass(
                too_big or "the feature table does not fit in memory on another process of this run"
            )
        processes = int(trainer.world_size)
        start = time.perf_counter()
        table = build_feature_table(
            dataset,
            source.encode_for_cache,
            key,
            identity,
            device=source.device,
            batch_size=datamodule.cfg.eval_batch_size,
            num_workers=datamodule.num_workers,
            context=context,
            collective=trainer.strategy if processes > 1 else None,
        )
        seconds = time.perf_counter() - start
        status = "cached (built)"
        shared = f", shared by {processes} processes" if processes > 1 else ""
        rank_zero_info(
            f"zsad feature cache: encoded {len(table)} training images once in {seconds:.1f}s{shared} "
            f"({table.nbytes() / 2**20:.1f} MiB); later steps skip image loading and the image encoder"
        )
        if file is not None:
            if trainer.is_global_zero:
                table.save(file)
            if processes > 1:
                # One copy per node instead of one per process: every process maps the saved file (where the
                # file system is not shared, the other nodes keep the table they built).
                trainer.strategy.barrier("zsad-feature-cache-saved")
                table = _load_matching_table(file, key, paths) or table
    datamodule.use_cached_train_features(CachedFeatureDataset(table))
    return table, status


class CachedTraining(Callback):
    """Trains the fitted module on its frozen features, encoded once (this module's docstring): what the
    runner adds to a fit when the method's spec has a ``feature_cache``. ``datamodule`` is the one being fit;
    ``status`` says what happened ("off", "bypassed: WHY", "cached (built)", "cached (loaded FILE)", ...)."""

    def __init__(self, datamodule: Any, settings: CacheSettings) -> None:
        self.datamodule = datamodule
        self.settings = settings
        self.status = "not prepared"

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Before the module's own ``on_fit_start`` and before the first training batch is loaded."""
        _, self.status = prepare_cached_training(pl_module, self.datamodule, trainer, self.settings)
