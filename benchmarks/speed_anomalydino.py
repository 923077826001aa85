"""AnomalyDINO speed: zsad against anomalib's AnomalyDINO test loop, same tiny DINOv2, same files, same CPU.

    python benchmarks/speed_anomalydino.py --official /tmp/anomalib-env

Both sides run on the parity model of benchmarks/parity_anomalydino.py (the tiny DINOv2 at 252 px) over its
12 generated test images and 2 references per category, in float32 on the CPU, one thread each, each side in
its own process, and time what a user runs, model construction included: anomalib's side is the parity's
official run (``parity_anomalydino.official_run``: one ``AnomalyDINOModel`` per category, anomalib's
one-category-per-run usage, its memory from the references, its test loop at a batch of one per image, its
AUROC / AUPR / AUPRO; the parity's read-outs add tensor copies only);
zsad's builds its model once, sets every category's references and evaluates its loader at batch 8 with
``AnomalyDINO.predict`` and its evaluator (AUROC, AP, F1-max, the exact and the 200-threshold AUPRO).
The two sides alternate for ``ZSAD_SPEED_ROUNDS`` rounds (default 2), each timing everything ``REPEATS``
times; each side's fastest time counts. The last line is one JSON object with the ratio (their time / zsad's).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_anomalydino as pa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import alternating_fastest, fastest, print_speedups, speed_rounds  # noqa: E402

REPEATS = 3
BATCH = 8  # zsad's evaluation batch


def official_times(official: Path, root: Path, weights: Path) -> dict[str, float]:
    """The parity's official run with anomalib's defaults (its read-outs add tensor copies only)."""
    torch.set_num_threads(1)
    return {"test_s": fastest(lambda: pa.official_run(official, root, weights, masking=False), REPEATS)}


def zsad_times(root: Path, references: dict[str, list[str]]) -> dict[str, float]:
    from lightning_modules.anomalydino.module import AnomalyDINOModule
    from lightning_modules.metrics import AnomalyEvaluator

    torch.set_num_threads(1)
    cfg = pa.zsad_config()
    state_dict = pa.parity_state_dict()

    @torch.no_grad()
    def test() -> None:
        data = pa.datamodule(root, cfg, eval_batch_size=BATCH)
        model = pa.parity_model(cfg, state_dict)
        module = AnomalyDINOModule(cfg, model=model)
        drawn = data.reference_images(data.reference_draws(pa.SHOTS, pa.SEED, 1)[0])
        assert drawn.draw.files() == references  # the official side's files
        module.references = drawn  # few-shot: predict_batch scores against the memory, not batched zero-shot
        for category_id, category in enumerate(data.categories):
            module.set_references(category_id, drawn.images(category))
        evaluator = AnomalyEvaluator(categories=list(data.categories))
        ps.predict_into(evaluator, module, data.test_dataloader())
        evaluator.compute()

    return {"test_s": fastest(test, REPEATS)}


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "a pip --target folder holding anomalib (or a checkout of open-edge-platform/anomalib)",
        "PYTHONPATH entries for the official side (anomalib's dependencies beyond zsad's)",
    )
    if args.official_side:
        ps.save_fixture(
            args.official_side, **official_times(args.official.resolve(), args.root, args.weights)
        )
        return
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="zsad-speed-anomalydino-"))
    root = ps.few_shot_layout(work)
    ours_outputs = pa.zsad_outputs(root)  # the protocol's draw, written where the official side reads it
    references = dict(
        zip(ours_outputs["categories"].tolist(), ours_outputs["references"].tolist(), strict=True)
    )
    (root.parent / ps.REFERENCES_FILE).write_text(json.dumps(references))
    pythonpath = tuple(p for p in (args.official_env,) if p)
    rounds = speed_rounds()
    theirs, ours = alternating_fastest(
        lambda: ps.run_official_side(__file__, args.official, root, pa.parity_state_dict(), work, pythonpath),
        lambda: zsad_times(root, references),
        rounds,
    )
    print(
        f"AnomalyDINO speed, {len(ours_outputs['scores'])} test images and {pa.SHOTS} references per category "
        f"of the parity DINOv2 at {pa.IMAGE_SIZE} px, CPU, one thread, best of {REPEATS} x {rounds} rounds"
    )
    rows = (("test_s", "test (references + test loop + metrics)"),)
    print_speedups("anomalydino", rows, theirs, ours, reference="anomalib")


if __name__ == "__main__":
    main()
