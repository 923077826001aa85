"""AnomalyDINO's batched zero-shot speed: zsad against the authors' own loop (dammsi/AnomalyDINO
``run_anomalydino_batched.py``), same CPU, one thread, each side in its own process.

    python benchmarks/speed_anomalydino_batched.py --official /tmp/anomalydino_src \
        --official-env /tmp/anomalydino-env --dinov2-hub /tmp/dinov2

Two timings (the arguments of benchmarks/parity_anomalydino_batched.py):

- ``test_s``: the whole evaluation on the parity's 44 generated files (tiny DINOv2, 154 px short side, 11 x 14
  patches, ``disc`` masked): their ``get_model`` + ``evaluate_ad_batched`` (cv2 reading, per-image features
  and masks, the mutual scoring, roc_auc_score; the parity's shims, no read-outs) against zsad's model
  construction, datamodule, ``AnomalyDINOModule.score_without_references`` and ``predict_batch`` (maps at the
  files' size) into its evaluator (every metric, pixels included: more work than theirs);
- ``scoring_s``: the mutual scoring alone at a real model's shape: one category of :data:`IMAGES` images x
  :data:`PATCHES` patches (a 32 x 32 grid, 448 px) x 384 features (ViT-S/14), seeded random features, every
  patch foreground: their ``calculate_cosine_distances`` per image + ``dists_to_score`` against zsad's
  ``category_scores``.

The sides alternate for ``ZSAD_SPEED_ROUNDS`` rounds (default 2), each timing ``REPEATS`` times; each side's
fastest time counts. The last line is one JSON object with the ratios (their time / zsad's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import functools  # noqa: E402
from unittest import mock  # noqa: E402

import numpy as np  # noqa: E402
import parity_anomalydino as pa  # noqa: E402
import parity_anomalydino_authors as paa  # noqa: E402
import parity_anomalydino_batched as pab  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from perf_support import fastest, print_speedups  # noqa: E402

REPEATS = 2
IMAGES, PATCHES, WIDTH = 40, 1024, 384  # the scoring-only shape: one category at 448 px, ViT-S/14


def scoring_features() -> list[np.ndarray]:
    generator = np.random.default_rng(0)
    return [generator.standard_normal((PATCHES, WIDTH)).astype(np.float32) for _ in range(IMAGES)]


def official_times(official: Path, root: Path, weights: Path) -> dict[str, float]:
    torch.set_num_threads(1)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["TQDM_DISABLE"] = "1"
    os.chdir(official)
    sys.path.insert(0, str(official))
    import run_anomalydino_batched as batched
    import src.backbones as backbones
    from sklearn.decomposition import PCA

    state = torch.load(weights, weights_only=True)
    batched.objects = list(ps.CATEGORIES)
    batched.object_anomalies = {
        c: sorted(p.name for p in (root / c / "test").iterdir() if p.name != "good") for c in ps.CATEGORIES
    }

    def test() -> None:
        with (
            mock.patch("torch.hub.load", lambda *a, **k: paa.official_dinov2(state)),
            mock.patch.object(backbones, "PCA", functools.partial(PCA, random_state=0)),
            mock.patch("torch.cuda.empty_cache", lambda: None),
        ):
            model = backbones.get_model("dinov2_vits14", "cpu", smaller_edge_size=pab.RESOLUTION)
            batched.evaluate_ad_batched(
                model, str(root), str(root.parent / "plots"), pab.MASKED, "cpu", save_examples=False
            )

    features = scoring_features()

    def scoring() -> None:
        for i in range(len(features)):  # their evaluate_ad_batched's scoring loop
            batched.dists_to_score(batched.calculate_cosine_distances(features, i, device="cpu"))

    return {"test_s": fastest(test, REPEATS), "scoring_s": fastest(scoring, REPEATS)}


def zsad_times(root: Path) -> dict[str, float]:
    from lightning_modules.anomalydino.batched import category_scores
    from lightning_modules.anomalydino.module import AnomalyDINOModule
    from lightning_modules.metrics import AnomalyEvaluator
    from lightning_modules.transductive import Populations

    torch.set_num_threads(1)
    cfg = pab.zsad_config()
    state_dict = pa.parity_state_dict()

    @torch.no_grad()
    def test() -> None:
        data = pa.datamodule(root, cfg, eval_batch_size=None)
        model = pa.parity_model(cfg, state_dict)
        categories = list(data.categories)
        model.set_masked_categories([i for i, c in enumerate(categories) if c in cfg.masked_categories])
        module = AnomalyDINOModule(cfg, model=model)
        module.score_without_references(data.test_dataloader(), Populations.of(data))
        evaluator = AnomalyEvaluator(categories=categories)
        ps.predict_into(evaluator, module, data.test_dataloader())
        evaluator.compute()

    features = torch.from_numpy(np.concatenate(scoring_features()))
    counts, foreground = [PATCHES] * IMAGES, torch.ones(IMAGES * PATCHES, dtype=torch.bool)

    def scoring() -> None:
        category_scores(features, counts, foreground, cfg.batched_quantile, cfg.top_fraction)

    return {"test_s": fastest(test, REPEATS), "scoring_s": fastest(scoring, REPEATS)}


def main() -> None:
    sides = paa.speed_sides(
        __doc__, __file__, "faiss-cpu, pandas", official_times, zsad_times, pab.batched_layout
    )
    if sides is None:
        return
    theirs, ours, rounds = sides
    print(
        f"AnomalyDINO batched zero-shot speed: the parity's 44 files (tiny DINOv2, {pab.RESOLUTION} px) and "
        f"the scoring alone of {IMAGES} images x {PATCHES} patches x {WIDTH}; CPU, one thread, best of "
        f"{REPEATS} x {rounds} rounds"
    )
    print_speedups(
        "anomalydino_batched",
        (
            ("test_s", "test (features, masks, mutual scoring, metrics)"),
            ("scoring_s", f"mutual scoring, {IMAGES} x {PATCHES} patches"),
        ),
        theirs,
        ours,
    )


if __name__ == "__main__":
    main()
