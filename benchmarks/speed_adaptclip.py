"""AdaptCLIP speed: zsad against the authors' train.py and test.py, same tiny CLIP, same files, same CPU.

    python benchmarks/speed_adaptclip.py --official /tmp/AdaptCLIP --official-env /tmp/adaptclip-env

Both sides run on the parity CLIP of benchmarks/parity_adaptclip.py (24 vision blocks, 154 px) over its 12
generated images, in float32 on the CPU, one thread each, each side in its own process, and time what a
user runs, model construction (static texts included) too:

- **training**: their ``train.train(args)`` (their script's arguments at the parity size: one epoch at batch
  8, two steps, one prompt image per sample, ``epoch_1.pth`` saved) against zsad's module, two steps at batch
  8 (query and prompt encoding, the three adapters, losses, backward, Adam; no feature cache) and the
  trainable state saved;
- **test**: their ``test.test(args)`` on that file, zero-shot and 1-shot (their loader at batch 8, scipy's
  Gaussian filter, their ``tools.Evaluator``: anomalib's AUROC, AUPR, F1-max and AUPRO) against zsad's (the
  file read with its official-checkpoint reader, loader at batch 8, ``AdaptCLIP.predict``, its evaluator:
  AUROC, AP, F1-max and both AUPROs).

The two sides alternate for ``ZSAD_SPEED_ROUNDS`` rounds (default 2), each timing everything ``REPEATS``
times; each side's fastest time counts. The last line is one JSON object with the ratios (theirs / zsad's).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_adaptclip as pa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import alternating_fastest, fastest, print_speedups, speed_rounds  # noqa: E402

REPEATS = 3
BATCH = 8  # their --batch_size (train and test); zsad's evaluation batch too


def official_times(official: Path, root: Path, weights: Path) -> dict[str, float]:
    torch.set_num_threads(1)
    side = pa.official_side(official, root, weights)
    work = weights.parent / "official"
    work.mkdir(exist_ok=True)
    train_args, _ = pa.official_args(root, work, BATCH)
    side.train.setup_seed(pa.SEED)
    times = {"train_s": fastest(lambda: side.train.train(train_args), REPEATS)}
    for shots in pa.SHOTS:
        _, test_args = pa.official_args(root, work, BATCH, shots)
        times[f"test_{shots}shot_s"] = fastest(lambda args=test_args: side.test.test(args), REPEATS)
    return times


def zsad_times(root: Path, their_file: Path) -> dict[str, float]:
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.adaptclip.training_prompts import TrainingPrompts
    from lightning_modules.metrics import AnomalyEvaluator
    from lightning_modules.registry import get_method

    torch.set_num_threads(1)
    spec = get_method("adaptclip")
    cfg = pa.zsad_config()
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, batch_size=BATCH, eval_batch_size=BATCH),
        pa.IMAGE_SIZE,
        spec.preprocessing(cfg, "synthetic"),
        seed=pa.SEED,
    )
    saved = their_file.parent / "zsad_trained.pt"
    weights = pa.state_dict()  # built once, as their side reads its weights file (not timed either way)

    def train() -> None:
        torch.manual_seed(pa.SEED)
        module = pa.zsad_module(cfg, weights)
        model = module.model.train()
        prompts = TrainingPrompts(data, cfg.train_prompts, cfg.train_prompt_images)
        optimizer = module.configure_optimizers()
        for batch in data.test_dataloader():
            masks = batch["mask"]
            images = prompts.images(0, batch["sample_id"], batch["category_id"])
            b, s = images.shape[:2]
            tokens = [t.reshape(b, s, *t.shape[1:]) for t in model.encode_images(images.flatten(0, 1)).tokens]
            output = model.scores(model.encode_images(batch["image"]), tuple(masks.shape[-2:]), tokens)
            loss = model.loss(output, batch["label"], masks)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        keep = module.trainable_state_keys()
        torch.save({k: v for k, v in module.state_dict().items() if k in keep}, saved)

    def test(shots: int) -> None:
        module = pa.zsad_module(cfg, weights)
        module.load_trained_weights(str(their_file), spec.official_checkpoint)
        module.eval()
        if shots:
            references = data.reference_images(data.reference_draws(shots, pa.SEED, 1)[0])
            for category_id, category in enumerate(data.categories):
                module.set_references(category_id, references.images(category))
        evaluator = AnomalyEvaluator(categories=list(data.categories))
        with torch.no_grad():
            ps.predict_into(evaluator, module, data.test_dataloader())
        evaluator.compute()

    times = {"train_s": fastest(train, REPEATS)}
    for shots in pa.SHOTS:
        times[f"test_{shots}shot_s"] = fastest(lambda s=shots: test(s), REPEATS)
    return times


def main() -> None:
    args = ps.parity_arguments(__doc__, "checkout of gaobb/AdaptCLIP", "PYTHONPATH entries for their imports")
    if args.official_side:
        ps.save_fixture(
            args.official_side, **official_times(args.official.resolve(), args.root, args.weights)
        )
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-speed-adaptclip-"))
    root = ps.write_parity_images(work / "mvtec")
    pythonpath = tuple(p for p in args.official_env.split(":") if p)
    rounds = speed_rounds()
    theirs, ours = alternating_fastest(
        lambda: ps.run_official_side(__file__, args.official, root, pa.state_dict(), work, pythonpath),
        lambda: zsad_times(root, work / "official" / "epoch_1.pth"),
        rounds,
    )
    print(
        f"AdaptCLIP speed, 12 images of the parity CLIP at {pa.IMAGE_SIZE} px, CPU, one thread, best of "
        f"{REPEATS} x {rounds} alternating rounds"
    )
    rows = (
        ("train_s", f"training (2 steps at batch {BATCH})"),
        ("test_0shot_s", "test zero-shot (12 images)"),
        ("test_1shot_s", "test 1-shot (12 images)"),
    )
    print_speedups("adaptclip", rows, theirs, ours)


if __name__ == "__main__":
    main()
