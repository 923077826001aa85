"""AdaCLIP speed: zsad against the authors' test loop and training step, same tiny CLIP, same files.

    python benchmarks/speed_adaclip.py --official /tmp/AdaCLIP --official-env /tmp/adaclip-env [--repeats 4]

The parity CLIP of benchmarks/parity_adaclip.py (4 + 4 blocks, 288 px) and its generated images (12 per
pass, ``--repeats`` passes), one CPU thread on both sides (``torch.set_num_threads(1)``, OMP/MKL threads 1),
each side in its own process:

- test: the authors' ``AdaCLIP_Trainer.evaluation`` (their DataLoader at batch size 1, the only one their
  code runs, the model, scipy's Gaussian filter, their sklearn metrics) against zsad's test path (its
  datamodule's loader at ``eval_batch_size`` 8, ``AdaCLIPModule.predict_batch`` and its evaluator), one
  image at a time through the model (``per_image_test``, the default) and batched;
- training: their ``train_one_batch`` (batch size 1) against zsad's step at batch 1 and at batch 8 (loss,
  backward, AdamW), per image.

The two sides alternate for ``ZSAD_SPEED_ROUNDS`` rounds (default 2) and each side's fastest round counts
(a shared machine's load varies). It prints images per second of each and the ratios; the last line is one
JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_adaclip as pa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import alternating_fastest, speed_rounds  # noqa: E402

TRAIN_BATCH = 8


def _repeated(root: Path, repeats: int) -> Path:
    """The parity images, ``repeats`` copies of each category under new category names."""
    import shutil

    out = root.parent / "repeated"
    for r in range(repeats):
        for category in ps.CATEGORIES:
            shutil.copytree(root / category, out / f"{category}{r}", dirs_exist_ok=True)
    return out


def zsad_times(root: Path, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.metrics import AnomalyEvaluator

    torch.set_num_threads(1)
    module = pa.zsad_module(initial)
    model = module.model
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=8),
        pa.IMAGE_SIZE,
        pa.preprocessing(),
    )
    model.set_classes(list(data.categories))
    counts = data.test_index.counts()
    times: dict[str, float] = {}
    for mode, per_image in (("test", True), ("test_batched", False)):
        module.cfg.per_image_test = per_image
        start = time.perf_counter()
        evaluator = AnomalyEvaluator(
            categories=data.categories,
            samples_per_category=[sum(counts[c].values()) for c in data.categories],
        )
        n = ps.predict_into(evaluator, module, data.test_dataloader())
        evaluator.compute()
        times |= {f"{mode}_images": n, f"{mode}_s": time.perf_counter() - start}
    items = data._dataset(data.cfg.test_split, train=False)
    optimizer = module.configure_optimizers()
    model.train()
    for batch_size in (1, TRAIN_BATCH):
        loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False)
        start, seen = time.perf_counter(), 0
        for step, batch in enumerate(loader):
            optimizer.zero_grad()
            output = model(batch["image"], batch["category_id"], module.hsf_seeds(batch, step))
            model.loss(output, batch["label"], batch["mask"], batch["has_mask"])["loss"].backward()
            optimizer.step()
            seen += len(batch["label"])
        times[f"train_b{batch_size}_images"], times[f"train_b{batch_size}_s"] = (
            seen,
            time.perf_counter() - start,
        )
    return times


def official_times(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    import dataset.base_dataset as base_dataset
    import method.trainer as trainer_module
    from dataset import MVTecDataset

    torch.set_num_threads(1)
    pa._copying_norm()
    base_dataset.Image.fromarray = ps.old_pillow_fromarray(base_dataset.Image.fromarray)
    trainer_module.create_model_and_transforms = pa._their_create_model(
        torch.load(weights, weights_only=True)
    )
    categories = sorted(p.name for p in root.iterdir() if p.is_dir())
    pa._write_their_meta(official, root, categories)
    model = pa.their_trainer()
    data = MVTecDataset(
        clsnames=categories,
        transform=model.preprocess,
        target_transform=model.transform,
        aug_rate=0.0,
        root=str(root),
        training=True,
    )
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=False)
    start = time.perf_counter()
    model.evaluation(loader, categories, False, None)
    times = {"test_images": len(data), "test_s": time.perf_counter() - start}
    start = time.perf_counter()
    model.train_epoch(loader)  # their train_one_batch per image
    times |= {"train_b1_images": len(data), "train_b1_s": time.perf_counter() - start}
    return {k: np.asarray(v) for k, v in times.items()}


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of caoyunkang/AdaCLIP", "PYTHONPATH entries the official side needs"
    )
    if args.official_side:
        ps.save_fixture(
            args.official_side, **official_times(args.official.resolve(), args.root, args.weights)
        )
        return
    pa.check_checkout(args.official)
    repeats = int(os.environ.get("ZSAD_SPEED_REPEATS", "4"))
    work = Path(tempfile.mkdtemp(prefix="zsad-speed-adaclip-"))
    root = _repeated(ps.write_parity_images(work / "mvtec"), repeats)
    pythonpath = (str(args.official.resolve()), args.official_env)
    initial = pa.initial_state(ps.load_fixture(pa.FIXTURE))
    theirs, ours = alternating_fastest(  # the image counts are the same every round
        lambda: ps.run_official_side(__file__, args.official, root, pa.state_dict(), work, pythonpath),
        lambda: zsad_times(root, initial),
        speed_rounds(),
    )

    def rate(times, kind: str) -> float:
        return float(times[f"{kind}_images"]) / float(times[f"{kind}_s"])

    rows = {
        "test (images/s)": (rate(theirs, "test"), rate(ours, "test")),
        "test, zsad batched (images/s)": (rate(theirs, "test"), rate(ours, "test_batched")),
        "training, batch 1 (images/s)": (rate(theirs, "train_b1"), rate(ours, "train_b1")),
        f"training, zsad batch {TRAIN_BATCH} (images/s)": (
            rate(theirs, "train_b1"),
            rate(ours, f"train_b{TRAIN_BATCH}"),
        ),
    }
    print(
        f"AdaCLIP speed, parity CLIP at {pa.IMAGE_SIZE} px, {int(ours['test_images'])} images, 1 CPU thread"
    )
    print(f"  {'':36} {'authors':>10} {'zsad':>10} {'ratio':>7}")
    for name, (a, b) in rows.items():
        print(f"  {name:36} {a:10.2f} {b:10.2f} {b / a:6.2f}x")
    print(json.dumps({"method": "adaclip", "speedup": {k: b / a for k, (a, b) in rows.items()}}))


if __name__ == "__main__":
    main()
