"""AnomalyDINO parity with the AUTHORS' code (dammsi/AnomalyDINO): their ``run_anomaly_detection`` and
``post_eval`` against zsad's authors' setting (configs/method/anomalydino_authors.yaml) on the same seeded
random-weight tiny DINOv2, the same image files and the same references.

    python benchmarks/parity_anomalydino_authors.py --official /tmp/anomalydino_src \
        --official-env /tmp/anomalydino-env --dinov2-hub /tmp/dinov2 [--write-fixture]

``--official``: an extract of dammsi/AnomalyDINO (``git archive HEAD | tar -x``); ``--official-env``: a
``pip install --no-deps --target`` folder with what their ``src/`` imports beyond zsad's environment
(``faiss-cpu``; docs/methods.md#anomalydino); ``--dinov2-hub``: an extract of facebookresearch/dinov2, whose
``DinoVisionTransformer`` their ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14')`` builds.

Images: the few-shot parity images (4 normal training images per category), each file and mask padded on
the right by :data:`PAD` px (edge pixels; masks with 0) to 130 x 100 px, so that the short-side resize keeps
a non-square aspect (112 x 145 px), the top-left crop removes 5 columns (112 x 140, 8 x 10 patches) and the
position embedding is resampled to a non-square grid. Both sides run at ``--resolution`` :data:`RESOLUTION`
with K = :data:`SHOTS` references, their seed 0 = zsad's draw 0 with ``protocol.selection=sorted``, twice:

- ``plain``: no masking, no rotation (their ``--preprocess force_no_mask_no_rotation``);
- ``full``: masking and rotated references for every category (``force_mask_rotation``; for a category of
  ``agnostic`` that masks), references unmasked (their ``--mask_ref_images False``).

Their side: ``src.backbones.get_model('dinov2_vits14', 'cpu', smaller_edge_size=112)`` (their transform,
``prepare_image``, ``extract_features``, ``compute_background_mask``), ``src.detection.run_anomaly_detection``
(cv2 reading, ``augment_image`` rotations, faiss memory and search, ``mean_top1p``, ``dists2map`` to the
image size, the ``.npy`` patch distances and ``.tiff`` maps it saves) and ``src.post_eval``'s
``eval_classification`` / ``eval_segmentation`` per category (image AUROC, AP, F1-max; pixel AUROC, F1-max,
AU-PRO at FPR 0.3). zsad's side: its datamodule (the spec's ``preprocessing: authors``), the few-shot
references (sorted selection, rotated), ``AnomalyDINO.set_references`` / ``predict`` and its evaluator.

Shims on their side (none changes a number): ``torch.hub.load`` returns the tiny DINOv2 built from the
dinov2 checkout with the hub builder's arguments (``interpolate_offset`` 0.1, no antialiasing) and the
parity weights; ``faiss_on_cpu=True`` (their ``--faiss_on_cpu``); ``torch.cuda.synchronize`` (a timing
barrier) is a no-op on this CPU; their randomized PCA gets zsad's seed (``random_state=0``; their code draws
from numpy's global generator); ``save_examples=False`` (plots only). Prints max |delta| per quantity;
``--write-fixture`` stores their outputs in tests/fixtures/parity/anomalydino_authors.npz
(tests/lightning_modules/anomalydino/test_anomalydino_authors_parity.py).
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
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

FIXTURE = ps.FIXTURES / "anomalydino_authors.npz"
SHOTS = 2
RESOLUTION = 112  # their --resolution (the short side): 100 px files -> 112 x 145
PAD = 30  # px added on the right of every file: 130 x 100 px images
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "method" / "anomalydino_authors.yaml"
RUNS = {"plain": (False, False), "full": (True, True)}  # run -> (masking, rotation), every category
MAP_SAMPLES = np.s_[:, ::4, ::4]  # the fixture keeps every 4th row and column of each 100 x 130 map
# their post_eval, per category: eval_classification's and eval_segmentation's numbers
METRICS = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_f1", "aupro_0.3")
# zsad's evaluator names of the columns both compute (zsad has no pixel F1-max): METRICS[i] for i in SHARED
ZSAD_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")
SHARED = [0, 1, 2, 3, 5]
# --dinov2-hub reaches the official side (a subprocess) through this environment variable
HUB_VARIABLE = "ZSAD_PARITY_DINOV2_HUB"


def authors_layout(folder: Path) -> Path:
    """The few-shot parity images, each image padded on the right by :data:`PAD` edge pixels and each
    mask by :data:`PAD` zeros (non-square files)."""
    return pad_right(ps.few_shot_layout(folder))


def pad_right(root: Path) -> Path:
    """Every image file under ``root`` padded on the right by :data:`PAD` edge pixels, every mask by
    :data:`PAD` zeros; returns ``root``."""
    for path in sorted(root.rglob("*.png")):
        image = Image.open(path)
        mode, array = image.mode, np.asarray(image)
        pad = [(0, 0), (0, PAD)] + [(0, 0)] * (array.ndim - 2)
        if "ground_truth" in path.parts:
            array = np.pad(array, pad, mode="constant")
        else:
            array = np.pad(array, pad, mode="edge")
        Image.fromarray(array, mode=mode).save(path)
    return root


def zsad_config(**overrides: Any):
    """configs/method/anomalydino_authors.yaml on the tiny DINOv2 at :data:`RESOLUTION`, every category
    masked and rotated (the ``full`` run), with ``overrides`` (``backbone.X`` keys for the backbone)."""
    from omegaconf import OmegaConf

    from lightning_modules.anomalydino.config import AnomalyDINOConfig

    node = OmegaConf.merge(OmegaConf.structured(AnomalyDINOConfig), OmegaConf.load(CONFIG))
    cfg = OmegaConf.to_object(node)
    cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.image_size = pa.TINY_DINO, None, RESOLUTION
    cfg.masked_categories = cfg.rotated_categories = None  # every category: the parity's two
    for key, value in overrides.items():
        target, name = (cfg.backbone, key[9:]) if key.startswith("backbone.") else (cfg, key)
        if not hasattr(target, name):
            raise AttributeError(key)
        setattr(target, name, value)
    return cfg


def run_config(run: str, **overrides: Any):
    masking, rotation = RUNS[run]
    return zsad_config(**{"masking": masking, "rotate_references": rotation, **overrides})


@torch.no_grad()
def zsad_outputs(root: Path, cfg: Any = None, run: str = "full") -> dict[str, np.ndarray]:
    """zsad's references, memory, patch distances, maps, image scores and metrics (images sorted by path)."""

    cfg = cfg or run_config(run)
    model = pa.parity_model(cfg)
    data = pa.datamodule(root, cfg, eval_batch_size=None)
    model.set_masked_categories(list(range(len(data.categories))) if cfg.masking else [])
    references = data.reference_images(data.reference_draws(SHOTS, 0, 1, "sorted")[0])
    reference_images, memory = [], []
    for category_id, category in enumerate(data.categories):
        images = references.images(category, list(cfg.rotation_angles) if cfg.rotate_references else None)
        model.set_references(category_id, images)
        reference_images.append(images)
        memory.append(model.memory[category_id])
    out: dict[str, list] = {k: [] for k in ("masks", "labels", "category_ids", "distances", "scores", "maps")}
    paths = []
    for batch in data.test_dataloader():
        images, ids = batch["image"], batch["category_id"]
        grid = model.encoder.grid_of(tuple(images.shape[-2:]))
        distances = model.masked_distances(ids, model.encode(images), grid)  # model.predict's steps
        size = tuple(batch["mask"].shape[-2:])
        out["distances"].append(distances.view(-1, *grid))
        out["scores"].append(model.image_scores(distances))
        out["maps"].append(model.anomaly_maps(distances, images.shape[-2:], size))
        for name in ("mask", "label", "category_id"):
            out[f"{name}s"].append(batch[name])
        paths.extend(str(Path(p).relative_to(root)) for p in batch["image_path"])
    order = np.argsort(paths)
    result = {k: torch.cat(v).numpy()[order] for k, v in out.items()}
    result |= {
        "paths": np.array(paths)[order],
        "categories": np.array(data.categories),
        "references": np.array([references.draw.files()[c] for c in data.categories]),
        "reference_images": torch.stack(reference_images).numpy(),
        "memory_size": np.array([len(m) for m in memory]),
        "memory": np.concatenate([m.numpy() for m in memory]),
    }
    result["metrics"] = zsad_metrics(result)
    return result


def zsad_metrics(r: dict[str, np.ndarray]) -> np.ndarray:
    """``[C, len(METRICS)]``: zsad's evaluator on one side's maps and scores (the masks: zsad's)."""
    values = ps.evaluator_metrics(
        r["categories"], r["category_ids"], r["scores"], r["labels"], r["maps"], r["masks"]
    )
    return np.array([[values[f"{c}/{m}"] for m in ZSAD_METRICS] for c in r["categories"]])


# --- the official side (a subprocess) ------------------------------------------------------------------
def official_dinov2(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The tiny DINOv2 as their ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14')`` builds it
    (dinov2/hub/backbones.py ``_make_dinov2_model``'s arguments) at width 32, 2 blocks."""
    hub = os.environ[HUB_VARIABLE]
    sys.path.insert(0, hub)
    from dinov2.models.vision_transformer import DinoVisionTransformer

    model = DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
        init_values=1e-5, ffn_layer="mlp", block_chunks=0, num_register_tokens=0,
        interpolate_antialias=False, interpolate_offset=0.1,
    )  # fmt: skip
    model.load_state_dict({**state, "mask_token": model.mask_token.detach().clone()}, strict=True)
    return model.eval().requires_grad_(False)


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    result: dict[str, Any] = {}
    for run in RUNS:
        result |= official_run(official, root, weights, run)
    return result | official_full_size(weights.parent)


def official_run(official: Path, root: Path, weights: Path, run: str) -> dict[str, np.ndarray]:
    """Their run_anomaly_detection per category and their post_eval, with the shims of the docstring; the
    read-outs (the arrays faiss.normalize_L2 and prepare_image see) add copies only."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.chdir(official)
    if str(official) not in sys.path:
        sys.path.insert(0, str(official))
    import faiss
    import src.backbones as backbones
    import src.detection as detection
    import src.post_eval as post_eval
    from sklearn.decomposition import PCA

    state = torch.load(weights, weights_only=True)
    masking, rotation = RUNS[run]
    normalized: list[np.ndarray] = []  # every array their faiss.normalize_L2 receives (memory first)
    prepared: list[torch.Tensor] = []  # every image tensor their prepare_image returns

    def record_normalize(x, _normalize=faiss.normalize_L2):
        _normalize(x)
        normalized.append(x.copy())

    with (
        mock.patch("torch.hub.load", lambda *a, **k: official_dinov2(state)),
        mock.patch.object(backbones, "PCA", functools.partial(PCA, random_state=0)),
        mock.patch("torch.cuda.synchronize", lambda *a, **k: None),
        mock.patch.object(detection.faiss, "normalize_L2", record_normalize),
    ):
        model = backbones.get_model("dinov2_vits14", "cpu", smaller_edge_size=RESOLUTION)
        prepare = model.prepare_image

        def recorded_prepare(image):
            tensor, grid = prepare(image)
            prepared.append(tensor.clone())
            return tensor, grid

        model.prepare_image = recorded_prepare
        out_dir = weights.parent / f"official_{run}"
        rows: dict[str, Any] = {"scores": {}, "memory": [], "reference_images": []}
        for category in ps.CATEGORIES:
            kinds = sorted(p.name for p in (root / category / "test").iterdir() if p.name != "good")
            normalized.clear()
            prepared.clear()
            scores, _, _ = detection.run_anomaly_detection(
                model, category, data_root=str(root), n_ref_samples=SHOTS,
                object_anomalies={category: kinds}, plots_dir=str(out_dir), save_examples=False,
                masking=masking, mask_ref_images=False, rotation=rotation, knn_metric="L2_normalized",
                knn_neighbors=1, faiss_on_cpu=True, seed=0, save_patch_dists=True, save_tiffs=True,
            )  # fmt: skip
            rows["memory"].append(normalized[0])
            n_references = SHOTS * (8 if rotation else 1)
            rows["reference_images"].append(torch.stack(prepared[:n_references]).numpy())
            rows["scores"] |= {f"{category}/test/{k}": v for k, v in scores.items()}
        return collect(post_eval, root, out_dir / "anomaly_maps" / "seed=0", rows, run)


# Full-size check (printed, not in the fixture): the hub's dinov2_vits14 architecture with seeded random
# weights, saved in Meta's checkpoint format and read by zsad's encoder from that file (timm's
# checkpoint_filter_fn, as method.backbone.pretrained=/path/to/dinov2_vits14_pretrain.pth), on a non-square
# input of the authors' size (short side 448: a 32 x 42 grid from the 37 x 37 position embedding)
FULL_SIZE_FILE, FULL_SIZE_INPUT = "dinov2_vits14_pretrain.pth", (448, 597)


def full_size_input() -> torch.Tensor:
    return torch.randn(1, 3, *FULL_SIZE_INPUT, generator=torch.Generator().manual_seed(ps.WEIGHTS_SEED))


def official_full_size(folder: Path) -> dict[str, np.ndarray]:
    sys.path.insert(0, os.environ[HUB_VARIABLE])
    from dinov2.hub.backbones import _make_dinov2_model

    torch.manual_seed(ps.WEIGHTS_SEED)
    model = _make_dinov2_model(arch_name="vit_small", pretrained=False)  # what torch.hub.load builds
    state = model.state_dict()
    generator = torch.Generator().manual_seed(ps.WEIGHTS_SEED)
    for name, value in state.items():
        if name.endswith("gamma"):
            state[name] = torch.rand(value.shape, generator=generator)
        if name == "pos_embed":
            state[name] = value + torch.randn(value.shape, generator=generator)
    model.load_state_dict(state)
    torch.save(state, folder / FULL_SIZE_FILE)
    image = full_size_input()[..., :448, :588]  # their prepare_image's top-left crop
    with torch.no_grad():
        tokens = model.eval().get_intermediate_layers(image)[0]
    return {"full_tokens": tokens.numpy()}


def zsad_full_size(folder: Path) -> np.ndarray:
    from lightning_modules.dino.config import DinoBackboneConfig
    from lightning_modules.dino.encoder import DinoEncoder

    cfg = DinoBackboneConfig(
        name="vit_small_patch14_dinov2", pretrained=str(folder / FULL_SIZE_FILE), image_size=448,
        crop="top_left", any_aspect=True, interpolate_offset=0.1,
    )  # fmt: skip
    return DinoEncoder(cfg)(full_size_input()).numpy()


def collect(post_eval: Any, root: Path, maps_dir: Path, rows: dict[str, Any], run: str) -> dict[str, Any]:
    """One run's outputs, images sorted by path: their saved patch distances and maps, their image scores
    and their post_eval metrics per category."""
    import tifffile

    paths = sorted(rows["scores"])
    out: dict[str, Any] = {
        "paths": np.array([f"{p}" for p in paths]),
        "scores": np.array([rows["scores"][p] for p in paths]),
        "distances": np.stack([np.load(maps_dir / f"{Path(p).with_suffix('')}.npy") for p in paths]),
        "maps": np.stack([tifffile.imread(maps_dir / f"{Path(p).with_suffix('')}.tiff") for p in paths]),
        "memory_size": np.array([len(m) for m in rows["memory"]]),
        "memory": np.concatenate(rows["memory"]),
        "reference_images": np.stack(rows["reference_images"]),
    }
    metrics = []
    for category in ps.CATEGORIES:
        gt, predictions = post_eval.parse_dataset_files(category, str(root), str(maps_dir), "MVTec")
        au_pro, auroc_px, f1_px = post_eval.eval_segmentation(gt, predictions, 0.3, delete_tiff_files=False)
        auroc, ap, f1 = post_eval.eval_classification(gt, predictions)
        metrics.append([auroc, ap, f1, auroc_px, f1_px, au_pro])
    out["metrics"] = np.array(metrics, dtype=np.float64)
    return {f"{run}_{k}": v for k, v in out.items()}


COMPARED = ("reference_images", "memory", "distances", "scores", "maps", "metrics")


def compare(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray], run: str) -> dict[str, float]:
    """Max |delta| per quantity of one run (zsad's references cropped as their prepare_image crops)."""
    if theirs[f"{run}_paths"].tolist() != ours["paths"].tolist():
        raise SystemExit(f"another image list: {theirs[f'{run}_paths']} vs {ours['paths']}")
    deltas = {}
    for name in COMPARED:
        official, zsad = theirs[f"{run}_{name}"], ours[name]
        if name == "metrics":
            official = official[:, SHARED]
        if name == "reference_images":
            official = official.reshape(-1, *official.shape[-3:])
            zsad = zsad.reshape(-1, *zsad.shape[-3:])[..., : official.shape[-2], : official.shape[-1]]
        deltas[f"{run}_{name}"] = ps.print_delta(f"{run} {name}", official, zsad)
    np.testing.assert_array_equal(theirs[f"{run}_memory_size"], ours["memory_size"])
    for m, name in enumerate(ZSAD_METRICS):
        ps.print_delta(f"  {name}", theirs[f"{run}_metrics"][:, SHARED[m]], ours["metrics"][:, m])
    # zsad's evaluator on THEIR maps and scores: the metric implementations alone
    on_theirs = zsad_metrics({**ours, "maps": theirs[f"{run}_maps"], "scores": theirs[f"{run}_scores"]})
    deltas[f"{run}_metrics_on_their_maps"] = ps.print_delta(
        f"{run} metrics, zsad's on their maps", theirs[f"{run}_metrics"][:, SHARED], on_theirs
    )
    return deltas


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "an extract of dammsi/AnomalyDINO",
        "PYTHONPATH entries for the official side (faiss-cpu)",
        lambda parser: parser.add_argument(
            "--dinov2-hub", type=Path, help="an extract of facebookresearch/dinov2 (required)"
        ),
    )
    if ps.serve_official_side(args, official_outputs):  # the subprocess: the hub path in HUB_VARIABLE
        return
    if args.dinov2_hub is None:
        raise SystemExit("--dinov2-hub DIR (an extract of facebookresearch/dinov2) is required")
    os.environ[HUB_VARIABLE] = str(args.dinov2_hub.resolve())
    runs: dict[str, dict[str, np.ndarray]] = {}

    def zsad_then_write_references(root: Path) -> dict[str, np.ndarray]:
        for run in RUNS:
            runs[run] = zsad_outputs(root, run=run)
        return runs["full"]

    root, _, theirs = ps.zsad_then_official(
        args, __file__, zsad_then_write_references, pa.parity_state_dict(),
        tuple(p for p in (args.official_env,) if p), authors_layout,
    )  # fmt: skip
    ours = runs["full"]
    categories = [str(c) for c in ours["categories"]]
    print(
        f"AnomalyDINO, the authors' setting ({SHOTS}-shot, {RESOLUTION} px): {args.official} vs zsad, "
        f"categories {categories}, {len(ours['scores'])} images; references (sorted, draw 0) "
        f"{dict(zip(categories, ours['references'].tolist(), strict=True))}"
    )
    deltas: dict[str, float] = {}
    for run in RUNS:
        print(
            f"run {run}: memory sizes {theirs[f'{run}_memory_size'].tolist()} (zsad {runs[run]['memory_size'].tolist()})"
        )
        deltas |= compare(theirs, runs[run], run)
        for c, category in enumerate(categories):
            values = ", ".join(
                f"{m} {v:.6f}" for m, v in zip(METRICS, theirs[f"{run}_metrics"][c], strict=True)
            )
            print(f"  authors, {run}, {category}: {values}")
    deltas["full_size_tokens"] = ps.print_delta(
        f"full size: ViT-S/14 tokens at {FULL_SIZE_INPUT}", theirs["full_tokens"], zsad_full_size(root.parent)
    )
    if args.write_fixture:
        stored: dict[str, Any] = {}
        for run in RUNS:
            for name in ("scores", "distances", "metrics", "memory_size"):
                stored[f"{run}_{name}"] = theirs[f"{run}_{name}"]
            stored[f"{run}_maps_sampled"] = theirs[f"{run}_maps"][MAP_SAMPLES].astype(np.float32)
            stored[f"{run}_memory_sampled"] = theirs[f"{run}_memory"][::5]
            images = theirs[f"{run}_reference_images"]
            stored[f"{run}_reference_images_sampled"] = images.reshape(-1, *images.shape[-3:])[..., ::8, ::8]
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(pa.parity_state_dict(), root, theirs["full_paths"], ours["masks"]),
            categories=ours["categories"],
            references=ours["references"],
            labels=ours["labels"],
            **stored,
        )
    print(ps.json_line("anomalydino_authors", deltas))


if __name__ == "__main__":
    main()


def speed_sides(
    doc: str,
    script: str,
    official_imports: str,
    official_times: Any,
    zsad_times: Any,
    layout: Any,
) -> tuple[dict[str, float], dict[str, float], int] | None:
    """The shared ``main`` of the AnomalyDINO authors' speed scripts: in the official side's process, its
    times saved (None returned); else both sides alternating on ``layout(work folder)``'s files, each side's
    fastest round (perf_support), and the number of rounds."""
    import tempfile

    from perf_support import alternating_fastest, speed_rounds

    args = ps.parity_arguments(
        doc,
        "an extract of dammsi/AnomalyDINO",
        f"PYTHONPATH entries for the official side ({official_imports}: their imports)",
        lambda parser: parser.add_argument(
            "--dinov2-hub", type=Path, help="an extract of facebookresearch/dinov2"
        ),
    )
    if args.official_side:
        ps.save_fixture(
            args.official_side, **official_times(args.official.resolve(), args.root, args.weights)
        )
        return None
    if args.dinov2_hub is None:
        raise SystemExit("--dinov2-hub DIR (an extract of facebookresearch/dinov2) is required")
    os.environ[HUB_VARIABLE] = str(args.dinov2_hub.resolve())
    work = Path(tempfile.mkdtemp(prefix=f"zsad-{Path(script).stem.replace('_', '-')}-"))
    root = layout(work)
    pythonpath = tuple(p for p in (args.official_env,) if p)
    rounds = speed_rounds()
    theirs, ours = alternating_fastest(
        lambda: ps.run_official_side(script, args.official, root, pa.parity_state_dict(), work, pythonpath),
        lambda: zsad_times(root),
        rounds,
    )
    return theirs, ours, rounds
