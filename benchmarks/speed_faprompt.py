"""FAPrompt speed: zsad against the authors' train.py and test.py, same tiny CLIP, same files, same CPU.

    python benchmarks/speed_faprompt.py --official /tmp/FAPrompt --anomalyclip /tmp/AnomalyCLIP \\
        --official-env /tmp/faprompt-env

Both sides run on the parity CLIP of benchmarks/parity_faprompt.py (24 vision blocks, 9 text blocks, 154 px)
over its 12 generated images, in float32 on the CPU, one thread each (``torch.set_num_threads(1)``), each
side in its own process, and time what a user runs, model construction included:

- **training**: their ``train.train(args)`` (train.sh's arguments at the parity size: one epoch at batch 8,
  two steps, and ``epoch_1.pth`` saved) against zsad's module built the same way, two steps at batch 8
  (encoder, both text passes, losses, backward, Adam) without the feature cache (one epoch gains nothing
  from it) and the trainable state saved;
- **test**: their ``test.test(args)`` on that file (their loader at batch size 1, the only size their loop
  runs, scipy's Gaussian filter, their metrics.py: sklearn AUROC / AP and the 200-threshold AUPRO with
  scikit-image) against zsad's (the file read with its official-checkpoint reader, its loader at batch 8,
  ``FAPrompt.predict``, its evaluator: AUROC, AP, F1-max, the exact and the 200-threshold AUPRO).

The two sides alternate for ``ZSAD_SPEED_ROUNDS`` rounds (default 2), each timing everything ``REPEATS``
times; each side's fastest time counts (a shared machine's load varies). The last line is one JSON object
with the ratios (their time / zsad's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_faprompt as pf  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import alternating_fastest, fastest, print_speedups, speed_rounds  # noqa: E402

REPEATS = 3
BATCH = 8  # train.sh --batch_size; zsad's evaluation batch too


def official_times(official: Path, root: Path, weights: Path) -> dict[str, float]:
    torch.set_num_threads(1)
    side = pf.official_side(official, weights)
    train_args, test_args = pf.official_args(root, weights.parent, BATCH)
    with pf.patched(side.patches):
        side.train.setup_seed(train_args.seed)
        timed_train = fastest(lambda: side.train.train(train_args), REPEATS)
        timed_test = fastest(lambda: side.test.test(test_args), REPEATS)
    return {"train_s": timed_train, "test_s": timed_test}


def zsad_times(root: Path, their_file: Path) -> dict[str, float]:
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.metrics import AnomalyEvaluator
    from lightning_modules.registry import get_method

    torch.set_num_threads(1)
    spec = get_method("faprompt")
    cfg = pf.zsad_config()
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=BATCH),
        pf.IMAGE_SIZE,
        spec.preprocessing(cfg, "synthetic"),
    )
    saved = their_file.parent / "zsad_trained.pt"

    def train() -> None:
        torch.manual_seed(pf.SEED)
        module = pf.zsad_module(cfg)
        model = module.model
        optimizer = module.configure_optimizers()
        for batch in data.test_dataloader():
            masks = batch["mask"]
            output = model.scores(model.encode_images(batch["image"]), tuple(masks.shape[-2:]))
            loss = model.loss(output, batch["label"], masks)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        keep = module.trainable_state_keys()
        torch.save({k: v for k, v in module.state_dict().items() if k in keep}, saved)

    def test() -> None:
        module = pf.zsad_module(cfg)
        module.load_trained_weights(str(their_file), spec.official_checkpoint)
        evaluator = AnomalyEvaluator(categories=list(data.categories))
        ps.predict_into(evaluator, module, data.test_dataloader())
        evaluator.compute()

    return {"train_s": fastest(train, REPEATS), "test_s": fastest(test, REPEATS)}


def main() -> None:
    args = pf.arguments(__doc__)
    if args.official_side:
        ps.save_fixture(
            args.official_side, **official_times(args.official.resolve(), args.root, args.weights)
        )
        return
    work, root, pythonpath = pf.prepared_files(args, "zsad-speed-faprompt-")
    rounds = speed_rounds()
    theirs, ours = alternating_fastest(
        lambda: ps.run_official_side(__file__, args.official, root, pf.state_dict(), work, pythonpath),
        lambda: zsad_times(root, work / "checkpoints" / "epoch_1.pth"),
        rounds,
    )
    print(
        f"FAPrompt speed, 12 images of the parity CLIP at {pf.IMAGE_SIZE} px, CPU, one thread, best of "
        f"{REPEATS} x {rounds} alternating rounds"
    )
    rows = (("train_s", f"training (2 steps at batch {BATCH})"), ("test_s", "test (12 images)"))
    print_speedups("faprompt", rows, theirs, ours)


if __name__ == "__main__":
    main()
