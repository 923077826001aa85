"""AnomalyDINO's batched zero-shot parity with the AUTHORS' code (dammsi/AnomalyDINO
``run_anomalydino_batched.py``): their ``evaluate_ad_batched`` (with their ``calculate_cosine_distances`` and
``dists_to_score``) against zsad's transductive pass (``AnomalyDINOModule.score_without_references``, the
setting of configs/method/anomalydino_batched.yaml) on the same seeded random-weight tiny DINOv2 and the same
generated image files.

    python benchmarks/parity_anomalydino_batched.py --official /tmp/anomalydino_src \
        --official-env /tmp/anomalydino-env --dinov2-hub /tmp/dinov2 [--write-fixture]

(the arguments of benchmarks/parity_anomalydino_authors.py). Images: MVTec's layout, 2 categories of
:data:`N_GOOD` good and :data:`N_DEFECT` x 4 defect-kind test images, each file padded on the right to 130 x
100 px (non-square); at ``--resolution`` :data:`RESOLUTION` (short side) each image is 154 x 200 px, top-left
cropped to 154 x 196 (11 x 14 = 154 patches: at least 100, so their ``dists_to_score`` is defined), and each
patch is scored against M = 21 x 154 patches of the other images: k = int(0.001 M) = 3. ``disc`` is masked
(their ``masking_default[disc] = True``), ``weave`` not.

Their side: ``src.backbones.get_model('dinov2_vits14', 'cpu', smaller_edge_size=RESOLUTION)`` and
``evaluate_ad_batched`` of their script, whose module globals ``objects`` / ``object_anomalies`` (set in
their ``__main__`` from ``get_dataset_info``) are set to the two categories and their defect folders. Shims
(none changes a number): ``torch.hub.load`` returns the tiny DINOv2 of the authors' parity
(benchmarks/parity_anomalydino_authors.py); their randomized PCA gets zsad's seed (``random_state=0``);
``save_examples=False`` (matplotlib plots only); ``torch.cuda.empty_cache`` is a no-op on this CPU. Read-outs:
``cv2.imread`` (which file), ``prepare_image`` (grid), ``compute_background_mask``, ``calculate_cosine_distances``
(its array, which their loop then zeroes on background patches in place) and ``dists_to_score``. Their script
evaluates image AUROC only; the maps of the fixture are their plotting path (``save_examples``: ``cv2.resize``
INTER_LINEAR of the patch grid to the image size, then ``scipy.ndimage.gaussian_filter(sigma=4)``) applied
here to their distances, since the plot code only draws them.

Prints max |delta| per quantity; ``--write-fixture`` stores their outputs in
tests/fixtures/parity/anomalydino_batched.npz (tests/lightning_modules/anomalydino/
test_anomalydino_batched_parity.py).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_anomalydino as pa  # noqa: E402
import parity_anomalydino_authors as paa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

from datamodules.synthetic import generate_synthetic_dataset  # noqa: E402

FIXTURE = ps.FIXTURES / "anomalydino_batched.npz"
RESOLUTION = 154  # their --resolution (the short side): 100 x 130 px files -> 154 x 200, 11 x 14 patches
N_GOOD, N_DEFECT = 6, 4  # test images per category: good, and per defect kind (4 kinds)
MASKED = {"disc": True, "weave": False}  # their masking_default
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "method" / "anomalydino_batched.yaml"
MAP_SAMPLES = np.s_[:, ::4, ::4]  # the fixture keeps every 4th row and column of each 100 x 130 map
ZSAD_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")


def batched_layout(folder: Path) -> Path:
    """MVTec's layout, :data:`N_GOOD` + 4 x :data:`N_DEFECT` test images per category, padded on the right."""
    root = folder / "mvtec"
    generate_synthetic_dataset(
        root, seed=ps.IMAGES_SEED, style="industrial", categories=list(ps.CATEGORIES),
        image_size=ps.IMAGE_FILE_SIZE, n_train=1, n_test_good=N_GOOD, n_test_defect_per_kind=N_DEFECT,
        overwrite=True,
    )  # fmt: skip
    return paa.pad_right(root)


def zsad_config(**overrides: Any):
    """configs/method/anomalydino_batched.yaml on the tiny DINOv2 at :data:`RESOLUTION`, ``disc`` masked."""
    from omegaconf import OmegaConf

    from lightning_modules.anomalydino.config import AnomalyDINOConfig

    node = OmegaConf.merge(OmegaConf.structured(AnomalyDINOConfig), OmegaConf.load(CONFIG))
    cfg = OmegaConf.to_object(node)
    cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.image_size = pa.TINY_DINO, None, RESOLUTION
    cfg.masked_categories = [c for c, masked in MASKED.items() if masked]
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise AttributeError(key)
        setattr(cfg, key, value)
    return cfg


@torch.no_grad()
def zsad_outputs(root: Path, cfg: Any = None) -> dict[str, np.ndarray]:
    """zsad's masks, patch distances, image scores, maps and metrics (images sorted by path): the module's
    batched zero-shot pass over the datamodule's test loader, then its ``predict_batch`` per batch."""
    from lightning_modules.anomalydino.module import AnomalyDINOModule
    from lightning_modules.transductive import Populations

    cfg = cfg or zsad_config()
    model = pa.parity_model(cfg)
    data = pa.datamodule(root, cfg, eval_batch_size=None)
    categories = list(data.categories)
    masked = (cfg.masked_categories or []) if cfg.masking else []  # the module's use_datamodule_categories
    model.set_masked_categories([i for i, c in enumerate(categories) if c in masked])
    module = AnomalyDINOModule(cfg, model=model)
    module.score_without_references(data.test_dataloader(), Populations.of(data))
    out: dict[str, list] = {k: [] for k in ("masks", "labels", "category_ids", "scores", "maps")}
    paths, distances, foreground, patches = [], [], [], []
    for batch in data.test_dataloader():
        scores, maps = module.predict_batch(batch)
        out["scores"].append(scores)
        out["maps"].append(maps)
        for name in ("mask", "label", "category_id"):
            out[f"{name}s"].append(batch[name])
        for sample in batch["sample_id"].tolist():
            distances.append(module._scored[sample][0])
        images = batch["image"]
        features = model.encode(images)
        grid = model.encoder.grid_of(tuple(images.shape[-2:]))
        foreground.append(model.foreground(batch["category_id"], features, grid))
        patches.append(features)
        paths.extend(str(Path(p).relative_to(root)) for p in batch["image_path"])
    order = np.argsort(paths)
    result = {k: torch.cat(v).numpy()[order] for k, v in out.items()}
    result |= {
        "paths": np.array(paths)[order],
        "categories": np.array(categories),
        "distances": torch.stack(distances).numpy()[order],
        "foreground": torch.cat(foreground).numpy()[order],
        "features": torch.cat(patches).numpy()[order],  # [n, N, D] raw patch tokens
    }
    values = ps.evaluator_metrics(
        result["categories"], result["category_ids"], result["scores"], result["labels"], result["maps"],
        result["masks"],
    )  # fmt: skip
    result["metrics"] = np.array([[values[f"{c}/{m}"] for m in ZSAD_METRICS] for c in categories])
    return result


# --- the official side (a subprocess) ------------------------------------------------------------------
def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    """Their evaluate_ad_batched on both categories, with the shims and read-outs of the docstring."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.chdir(official)
    if str(official) not in sys.path:
        sys.path.insert(0, str(official))
    import cv2
    import run_anomalydino_batched as batched
    import src.backbones as backbones
    from scipy.ndimage import gaussian_filter
    from sklearn.decomposition import PCA

    state = torch.load(weights, weights_only=True)
    files: list[str] = []
    grids: list[tuple[int, int]] = []
    masks: list[np.ndarray] = []
    distances: list[np.ndarray] = []
    scores: list[float] = []

    def record_imread(path, flags=None, _imread=cv2.imread):
        files.append(str(Path(path).resolve().relative_to(root.resolve())))
        return _imread(path, flags)

    def record_distances(*args, _calculate=batched.calculate_cosine_distances, **kwargs):
        distances.append(_calculate(*args, **kwargs))  # zeroed on the background in place afterwards
        return distances[-1]

    def record_score(dists, _score=batched.dists_to_score):
        scores.append(float(_score(dists)))
        return scores[-1]

    with (
        mock.patch("torch.hub.load", lambda *a, **k: paa.official_dinov2(state)),
        mock.patch.object(backbones, "PCA", functools.partial(PCA, random_state=0)),
        mock.patch("torch.cuda.empty_cache", lambda: None),
        mock.patch.object(cv2, "imread", record_imread),
        mock.patch.object(batched, "calculate_cosine_distances", record_distances),
        mock.patch.object(batched, "dists_to_score", record_score),
    ):
        model = backbones.get_model("dinov2_vits14", "cpu", smaller_edge_size=RESOLUTION)
        prepare, background = model.prepare_image, model.compute_background_mask

        def recorded_prepare(image):
            tensor, grid = prepare(image)
            grids.append(grid)
            return tensor, grid

        def recorded_mask(*args, **kwargs):
            masks.append(np.asarray(background(*args, **kwargs)).copy())
            return masks[-1]

        model.prepare_image, model.compute_background_mask = recorded_prepare, recorded_mask
        batched.objects = list(ps.CATEGORIES)  # their __main__'s get_dataset_info globals
        batched.object_anomalies = {
            c: sorted(p.name for p in (root / c / "test").iterdir() if p.name != "good")
            for c in ps.CATEGORIES
        }
        aurocs = batched.evaluate_ad_batched(
            model, str(root), str(root.parent / "plots"), MASKED, "cpu", save_examples=False
        )
    order = np.argsort(files)
    maps = []
    for file, dists, grid in zip(files, distances, grids, strict=True):  # their plotting path
        height, width = cv2.imread(str(root / file)).shape[:2]
        grid_map = cv2.resize(dists.reshape(grid), (width, height), interpolation=cv2.INTER_LINEAR)
        maps.append(gaussian_filter(grid_map, sigma=4))
    return {
        "paths": np.array(files)[order],
        "distances": np.stack(distances)[order],
        "masks": np.stack(masks)[order],
        "scores": np.array(scores)[order],
        "maps": np.stack(maps)[order],
        "grids": np.array(grids)[order],
        "auroc": np.array([aurocs[c] for c in ps.CATEGORIES]),
    }


def compare(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> dict[str, float]:
    if theirs["paths"].tolist() != ours["paths"].tolist():
        raise SystemExit(f"another image list: {theirs['paths']} vs {ours['paths']}")
    deltas = {
        "foreground": ps.print_delta("foreground masks", theirs["masks"], ours["foreground"]),
        "distances": ps.print_delta("patch distances", theirs["distances"], ours["distances"]),
        "scores": ps.print_delta("image scores", theirs["scores"], ours["scores"]),
        "maps": ps.print_delta("maps (their plotting path)", theirs["maps"], ours["maps"]),
        "image_auroc": ps.print_delta("image AUROC", theirs["auroc"], ours["metrics"][:, 0]),
    }
    on_theirs = zsad_metric_on(ours, theirs["scores"])
    deltas["image_auroc_on_their_scores"] = ps.print_delta(
        "image AUROC, zsad's evaluator on their scores", theirs["auroc"], on_theirs
    )
    return deltas


def zsad_metric_on(ours: dict[str, np.ndarray], scores: np.ndarray) -> np.ndarray:
    values = ps.evaluator_metrics(
        ours["categories"], ours["category_ids"], scores, ours["labels"], ours["maps"], ours["masks"]
    )
    return np.array([values[f"{c}/image_auroc"] for c in ours["categories"]])


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "an extract of dammsi/AnomalyDINO",
        "PYTHONPATH entries for the official side (faiss-cpu: their src/ imports it)",
        lambda parser: parser.add_argument(
            "--dinov2-hub", type=Path, help="an extract of facebookresearch/dinov2 (required)"
        ),
    )
    if ps.serve_official_side(args, official_outputs):
        return
    if args.dinov2_hub is None:
        raise SystemExit("--dinov2-hub DIR (an extract of facebookresearch/dinov2) is required")
    os.environ[paa.HUB_VARIABLE] = str(args.dinov2_hub.resolve())
    root, ours, theirs = ps.zsad_then_official(
        args, __file__, zsad_outputs, pa.parity_state_dict(),
        tuple(p for p in (args.official_env,) if p), batched_layout,
    )  # fmt: skip
    print(
        f"AnomalyDINO batched zero-shot ({RESOLUTION} px, grid {theirs['grids'][0].tolist()}): "
        f"{args.official} vs zsad, categories {ps.CATEGORIES}, {len(ours['scores'])} images; their image "
        f"AUROC {dict(zip(ps.CATEGORIES, theirs['auroc'].round(6).tolist(), strict=True))}"
    )
    deltas = compare(theirs, ours)
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(pa.parity_state_dict(), root, theirs["paths"], ours["masks"]),
            categories=ours["categories"],
            labels=ours["labels"],
            distances=theirs["distances"],
            foreground=theirs["masks"],
            scores=theirs["scores"],
            auroc=theirs["auroc"],
            maps_sampled=theirs["maps"][MAP_SAMPLES].astype(np.float32),
        )
    print(ps.json_line("anomalydino_batched", deltas))


if __name__ == "__main__":
    main()
