"""AnomalyDINO speed in the authors' setting: zsad against the authors' own test loop (dammsi/AnomalyDINO),
same tiny DINOv2, same files, same CPU.

    python benchmarks/speed_anomalydino_authors.py --official /tmp/anomalydino_src \
        --official-env /tmp/anomalydino-env --dinov2-hub /tmp/dinov2

Both sides run the ``full`` setting of benchmarks/parity_anomalydino_authors.py (masking, 8 rotations of each
of the 2 references per category, 112 px short side, the 12 non-square test images, maps at the files' size)
in float32 on the CPU, one thread each, each side in its own process, and time what a user runs, model
construction included: the authors' side is the parity's official run (``official_run``: their
``get_model``, ``run_anomaly_detection`` per category with faiss on the CPU, writing the ``.npy`` / ``.tiff``
their evaluation reads, then ``post_eval``'s classification and segmentation metrics; the parity's read-outs
add array copies only); zsad's builds its model once, sets every category's (rotated) references and
evaluates its loader (batch 1: the images keep their aspect) with ``AnomalyDINOModule.predict_batch`` and
its evaluator (AUROC, AP, F1-max, the exact and the 200-threshold AUPRO). The sides alternate for
``ZSAD_SPEED_ROUNDS`` rounds (default 2), each timing everything ``REPEATS`` times; each side's fastest time
counts. The last line is one JSON object with the ratio (their time / zsad's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_anomalydino as pa  # noqa: E402
import parity_anomalydino_authors as paa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import fastest, print_speedups  # noqa: E402

REPEATS = 3
RUN = "full"


def official_times(official: Path, root: Path, weights: Path) -> dict[str, float]:
    torch.set_num_threads(1)
    return {"test_s": fastest(lambda: paa.official_run(official, root, weights, RUN), REPEATS)}


def zsad_times(root: Path) -> dict[str, float]:
    from lightning_modules.anomalydino.module import AnomalyDINOModule
    from lightning_modules.metrics import AnomalyEvaluator

    torch.set_num_threads(1)
    cfg = paa.run_config(RUN)
    state_dict = pa.parity_state_dict()

    @torch.no_grad()
    def test() -> None:
        data = pa.datamodule(root, cfg, eval_batch_size=None)
        model = pa.parity_model(cfg, state_dict)
        model.set_masked_categories(list(range(len(data.categories))))
        module = AnomalyDINOModule(cfg, model=model)
        drawn = data.reference_images(data.reference_draws(paa.SHOTS, 0, 1, "sorted")[0])
        module.references = drawn  # few-shot: predict_batch scores against the memory, not batched zero-shot
        for category_id, category in enumerate(data.categories):  # the module's load_references
            module.set_references(category_id, drawn.images(category, list(cfg.rotation_angles)))
        evaluator = AnomalyEvaluator(categories=list(data.categories))
        ps.predict_into(evaluator, module, data.test_dataloader())
        evaluator.compute()

    return {"test_s": fastest(test, REPEATS)}


def main() -> None:
    sides = paa.speed_sides(__doc__, __file__, "faiss-cpu", official_times, zsad_times, paa.authors_layout)
    if sides is None:
        return
    theirs, ours, rounds = sides
    print(
        f"AnomalyDINO speed, the authors' setting ({RUN}: masking, 8 rotations of {paa.SHOTS} references per "
        f"category), the parity DINOv2 at {paa.RESOLUTION} px, CPU, one thread, best of {REPEATS} x {rounds} rounds"
    )
    print_speedups(
        "anomalydino_authors", (("test_s", "test (references + test loop + metrics)"),), theirs, ours
    )


if __name__ == "__main__":
    main()
