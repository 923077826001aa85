"""Bayes-PFL speed: zsad against the authors' test loop and training step, same tiny CLIP, same files, same CPU.

    python benchmarks/speed_bayes_pfl.py --official /tmp/Bayes-PFL --official-env /tmp/bpfl-env

Both sides run on the parity CLIP of benchmarks/parity_bayes_pfl.py (12 vision blocks, 240 px) over its 12
generated images, in float32 on the CPU, one thread each (``torch.set_num_threads(1)``), with test.sh's 10
Monte-Carlo samples:

- **test loop**: their ``test.test(args)`` with ``calcuate_metric_pixel`` replaced by a no-op (so: their
  dataset and loader at batch 1, which their test mode requires, encoder, ``forward_ensemble`` with its
  per-image, per-sample text loop, the stage-2 forward, their per-pair softmax and means in NumPy) against
  zsad's test loader at batch 12 and ``BayesPFLModule.predict_batch`` (encoder, the keyed draws, every
  image's 2 x 10 x 3 prompts through the text tower at once, the maps, the Gaussian smoothing and the top-k
  parts of the score, which their loop leaves to ``calcuate_metric_pixel``);
- **training step**: their train.py loop body on one batch of 6 images (frozen encoder, texts, maps of all
  prompts, losses, backward, Adam step, schedule) against zsad's (``encode_images``, ``scores_from_draws``,
  ``loss``, backward, Adam step, schedule).

Each is timed three times, the best kept; the last line is one JSON object with the ratios (their time / zsad's).
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_bayes_pfl as pb  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import fastest  # noqa: E402

REPEATS = 3
TEST_SAMPLES = 10  # test.sh --sample_num


def official_times(official: Path, root: Path, weights: Path) -> dict[str, float]:
    torch.set_num_threads(1)
    setup = pb.official_setup(official, root, weights, test_samples=TEST_SAMPLES)
    setup.their_test.calcuate_metric_pixel = lambda *args, **kwargs: None
    setup.their_test.Load_CLIP = lambda *a, **k: (setup.model_clip, None, setup.preprocess_test)

    def test_loop() -> None:
        setup.draws.rows = None  # the global RNG, as theirs
        setup.their_test.test(setup.args)

    timed_test = fastest(test_loop, REPEATS)
    items = pb.official_train_batch(setup)
    setup.my_model.train()
    optimizer, scheduler, _ = pb.official_optimizer(setup)
    return {
        "test_loop_s": timed_test,
        "train_step_s": fastest(lambda: pb.official_step(setup, dict(items), optimizer, scheduler), REPEATS),
    }


def zsad_times(root: Path) -> dict[str, float]:
    from lightning_modules.bayes_pfl.module import build_optimizers

    torch.set_num_threads(1)
    torch.manual_seed(pb.INIT_SEED)  # zsad's own initialisation: the time does not depend on the values
    module, model, cfg = pb.build_zsad(None, pb.zsad_config(test_samples=TEST_SAMPLES))
    module.trained_stage = 2
    data, _, _ = pb.zsad_batch(root)
    data.cfg.eval_batch_size = 12
    module._trainer = types.SimpleNamespace(datamodule=data)  # what predict_batch reads of a Trainer
    module.target_name = pb.DATASET

    def test_loop() -> None:
        module.eval()
        with torch.no_grad():
            for batch in data.test_dataloader():
                module.predict_batch(batch)

    timed_test = fastest(test_loop, REPEATS)
    batch = next(iter(data.test_dataloader()))
    images, masks, labels = (
        batch["image"][: pb.TRAIN_BATCH],
        batch["mask"][: pb.TRAIN_BATCH],
        batch["label"][: pb.TRAIN_BATCH],
    )
    words = [data.categories[int(i)] for i in batch["category_id"][: pb.TRAIN_BATCH]]
    module.train()
    stage1, _, schedule = build_optimizers(model, cfg, pb.TOTAL_STEPS)

    def step() -> None:
        features = model.encode_images(images)
        eps = model.training_draws(len(images), torch.device("cpu"))
        prompt = int(torch.randint(0, cfg.prompt_bank_size, (1, 1))[0])
        output = model.scores_from_draws(features, words, tuple(masks.shape[-2:]), prompt, 1, eps)
        loss = model.loss(output, labels, masks, 1)["loss"]
        stage1.zero_grad()
        loss.backward()
        stage1.step()
        schedule.step()

    return {"test_loop_s": timed_test, "train_step_s": fastest(step, REPEATS)}


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of xiaozhen228/Bayes-PFL", "PYTHONPATH entries the official side needs"
    )
    if args.official_side:
        ps.save_fixture(
            args.official_side, **official_times(args.official.resolve(), args.root, args.weights)
        )
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-speed-bayes-pfl-"))
    root = ps.write_parity_images(work / "mvtec")
    weights = pb.state_dict()
    env = tuple(p for p in args.official_env.split(":") if p)
    theirs = {
        k: float(v)
        for k, v in ps.run_official_side(__file__, args.official, root, weights, work, env).items()
    }
    ours = zsad_times(root)
    print(
        f"Bayes-PFL speed, 12 images of the parity CLIP at {pb.IMAGE_SIZE} px, {TEST_SAMPLES} samples, CPU, one "
        f"thread, best of {REPEATS}"
    )
    ratios = {}
    for name, label in (
        ("test_loop_s", "test loop"),
        ("train_step_s", f"training step (batch {pb.TRAIN_BATCH})"),
    ):
        key = name.removesuffix("_s")
        ratios[key] = theirs[name] / ours[name]
        print(f"  {label:<26} authors {theirs[name]:.3f} s, zsad {ours[name]:.3f} s: {ratios[key]:.2f}x")
    print(json.dumps({"method": "bayes_pfl", "authors_s": theirs, "zsad_s": ours, "speedup": ratios}))


if __name__ == "__main__":
    main()
