"""AnomalyDINO parity: anomalib's AnomalyDINO and zsad's on the same seeded random-weight tiny DINOv2, the
same image files and the same K reference images per category.

    python benchmarks/parity_anomalydino.py --official /tmp/anomalib-env [--official-env DIR] [--write-fixture]

``--official`` is where anomalib's package is importable: a ``pip install --target`` folder holding
``anomalib/`` (and its dependencies beyond zsad's), or a checkout of open-edge-platform/anomalib (its
``src/``); docs/methods.md#anomalydino gives the recipe. The parity images are written with 4 normal training
images per category; zsad's few-shot protocol draws :data:`SHOTS` of them (seed :data:`SEED`, draw 0) and the
official side receives the same file list. anomalib's side reads each file with ``read_image`` /
``MVTecADDataset``, applies ``AnomalyDINO.configure_pre_processor()``'s transform (252 x 252, ImageNet
mean/std), fills ``AnomalyDINOModel``'s memory in training mode with the K references of a category as one
batch and ``fit()``, then scores every test image as its test loop does (a batch of one) and computes
anomalib's AUROC / AUPR / AUPRO; zsad's side reads the same files with its datamodule (AnomalyDINO's
preprocessing), ``AnomalyDINO.set_references`` and ``predict``, and its own metrics.

Shims on anomalib's side (none changes a number): ``timm.create_model`` returns the parity ViT (the
DINOv2 architecture at width 32, 2 blocks, :func:`parity_state_dict`'s weights) instead of downloading
``vit_small_patch14_dinov2``, and the feature extractor's block index is set to that ViT's last block (anomalib
infers it from the name: 11 for "small"); with ``masking=True``, its randomized PCA gets zsad's seed
(``random_state=0``; anomalib draws from numpy's global generator, so its own masks vary between runs).
Both sides run once with anomalib's defaults and once with ``masking=True`` (every category). Prints max
|delta| per quantity; ``--write-fixture`` stores the official outputs in
tests/fixtures/parity/anomalydino.npz (tests/lightning_modules/anomalydino/test_anomalydino_parity.py).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import parity_winclip as pw  # noqa: E402
import torch  # noqa: E402

from datamodules import AnomalyDataModule, DataConfig  # noqa: E402
from lightning_modules.anomalydino.config import AnomalyDINOConfig  # noqa: E402
from lightning_modules.anomalydino.model import AnomalyDINO  # noqa: E402
from lightning_modules.anomalydino.spec import preprocessing  # noqa: E402
from lightning_modules.dino.config import DinoBackboneConfig  # noqa: E402
from lightning_modules.dino.encoder import TINY_DINO, DinoEncoder, tiny_dino  # noqa: E402

FIXTURE = ps.FIXTURES / "anomalydino.npz"
SHOTS, SEED = 2, 111
IMAGE_SIZE = 252  # anomalib's AnomalyDINO pre-processor (18 x 18 patches of 14 px)
MAP_SAMPLES = np.s_[:, ::6, ::6]  # the fixture keeps every 6th row and column of each map (42 x 42)


def parity_state_dict() -> dict[str, torch.Tensor]:
    """The tiny DINOv2's seeded random weights, with LayerScale gammas near 1, a position embedding of unit
    scale (timm's init, 1e-5 and 0.02, would leave the blocks and the positions nearly unused) and a final
    LayerNorm scaled so that the first principal component of an image's patches crosses masking's threshold
    on part of them (as DINOv2's features do)."""
    torch.manual_seed(ps.WEIGHTS_SEED)
    state = tiny_dino().state_dict()
    generator = torch.Generator().manual_seed(ps.WEIGHTS_SEED)
    for name, value in state.items():
        if name.endswith(".gamma"):
            state[name] = 0.5 + torch.rand(value.shape, generator=generator)
    state["pos_embed"] = state["pos_embed"] * 50
    state["norm.weight"] = (
        state["norm.weight"] * 6
    )  # features of a scale where masking's threshold (10) splits
    return state


def parity_vit(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    vit = tiny_dino()
    vit.load_state_dict(state_dict)
    return vit.eval().requires_grad_(False)


def zsad_config(**overrides) -> AnomalyDINOConfig:
    backbone = DinoBackboneConfig(name=TINY_DINO, pretrained=None, image_size=IMAGE_SIZE)
    cfg = AnomalyDINOConfig(backbone=backbone)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def datamodule(root: Path, cfg: AnomalyDINOConfig, eval_batch_size: int | None = 4) -> AnomalyDataModule:
    """zsad's datamodule of the generated files at ``root``, at ``cfg``'s input size and preprocessing (the
    AnomalyDINO parity and speed scripts'); ``eval_batch_size`` None: DataConfig's default."""
    batch = {} if eval_batch_size is None else {"eval_batch_size": eval_batch_size}
    return AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, **batch),
        cfg.backbone.image_size,
        preprocessing(cfg, "synthetic"),
    )


def parity_model(cfg: AnomalyDINOConfig, state_dict: dict[str, torch.Tensor] | None = None) -> AnomalyDINO:
    """zsad's AnomalyDINO on the parity ViT (``state_dict``: its weights, default the seeded ones)."""
    return AnomalyDINO(cfg, DinoEncoder(cfg.backbone, parity_vit(state_dict or parity_state_dict())))


@torch.no_grad()
def zsad_outputs(
    root: Path, cfg: AnomalyDINOConfig | None = None, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, np.ndarray]:
    """zsad's references, memory, patch distances, maps, image scores and per-category metrics."""
    cfg = cfg or zsad_config()
    model = parity_model(cfg, state_dict)
    data = datamodule(root, cfg)
    model.set_masked_categories(list(range(len(data.categories))) if cfg.masking else [])
    references = data.reference_images(data.reference_draws(SHOTS, SEED, 1)[0])
    reference_images, memory = [], []
    for category_id, category in enumerate(data.categories):
        images = references.images(category)
        model.set_references(category_id, images)
        reference_images.append(images)
        memory.append(model.memory[category_id])
    out: dict[str, list] = {k: [] for k in ("images", "masks", "labels", "category_ids", "distances")}
    out.update(scores=[], maps=[])
    paths = []
    for batch in data.test_dataloader():
        images, ids = batch["image"], batch["category_id"]
        grid = model.encoder.grid_of(tuple(images.shape[-2:]))
        distances = model.masked_distances(ids, model.encode(images), grid)  # model.predict's steps
        out["distances"].append(distances)
        scores = model.image_scores(distances)
        maps = model.anomaly_maps(distances, images.shape[-2:], (IMAGE_SIZE, IMAGE_SIZE))
        for name, value in (("scores", scores), ("maps", maps), ("images", images), ("category_ids", ids)):
            out[name].append(value)
        out["masks"].append(batch["mask"])
        out["labels"].append(batch["label"])
        paths.extend(str(Path(p).relative_to(root)) for p in batch["image_path"])
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    grid = model.encoder.grid
    result["distances"] = result["distances"].reshape(-1, grid, grid)
    result |= {
        "paths": np.array(paths),
        "categories": np.array(data.categories),
        "references": np.array([references.draw.files()[c] for c in data.categories]),
        "reference_images": torch.stack(reference_images).numpy(),
        "memory_size": np.array([len(m) for m in memory]),
    }
    if not cfg.masking:
        result["memory"] = torch.stack(memory).numpy()
    result["metrics"] = pw._per_category_metrics(result)
    return result | sampled(result) if not cfg.masking else result | masked_sampled(result)


def sampled(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps of the large arrays: every 6th map pixel, every 12th image pixel, every 8th memory row."""
    shape = r["reference_images"].shape
    return {
        "maps_sampled": r["maps"][MAP_SAMPLES],
        "images_sampled": r["images"][:, :, ::12, ::12],
        "reference_images_sampled": r["reference_images"].reshape(-1, *shape[-3:])[:, :, ::12, ::12],
        "memory_sampled": r["memory"][:, ::8],
    }


MASKED = ("memory_size", "distances", "scores", "metrics")  # compared with masking on (prefix "masked_")


def masked_sampled(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"maps_sampled": r["maps"][MAP_SAMPLES]}


@contextmanager
def _official_imports(official: Path):
    """anomalib importable from a checkout (``src/``) or a ``pip install --target`` folder."""
    path = str(official / "src") if (official / "src" / "anomalib").is_dir() else str(official)
    sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.path.remove(path)


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    """anomalib's outputs with its defaults and, prefixed ``masked_``, with ``masking=True``."""
    plain = official_run(official, root, weights, masking=False)
    masked = official_run(official, root, weights, masking=True)
    return plain | {f"masked_{k}": v for k, v in masked.items() if k in (*MASKED, "maps")}


@torch.no_grad()
def official_run(official: Path, root: Path, weights: Path, masking: bool) -> dict[str, np.ndarray]:
    """anomalib's reading, pre-processor, AnomalyDINOModel (memory from the references, test forward) and
    metrics on the same files and weights."""
    files = ps.official_references(weights)
    categories = list(ps.CATEGORIES)
    with _official_imports(official):
        from anomalib.data.datasets.image.mvtecad import MVTecADDataset
        from anomalib.data.utils import read_image
        from anomalib.models.components.feature_extractors import timm as timm_extractor
        from anomalib.models.image.anomaly_dino import torch_model
        from anomalib.models.image.anomaly_dino.lightning_model import AnomalyDINO as OfficialLightning
        from anomalib.models.image.anomaly_dino.torch_model import AnomalyDINOModel
        from torchvision.tv_tensors import Image

    # shim: anomalib's randomized PCA draws from numpy's global generator (its masks change from run to run
    # where an image's two leading components are close); it gets zsad's seed, the same algorithm
    seeded_pca = functools.partial(torch_model.PCA, random_state=0)
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(torch_model, "PCA", seeded_pca))
    state_dict = torch.load(weights, weights_only=True)
    transform = OfficialLightning.configure_pre_processor().transform
    out: dict[str, list] = {k: [] for k in ("images", "masks", "labels", "distances", "scores", "maps")}
    memory: dict[str, list] = {"reference_images": [], "memory": []}
    paths, counts = [], []
    for category in categories:
        vit = parity_vit(state_dict)
        with mock.patch.object(timm_extractor.timm, "create_model", return_value=vit):
            model = AnomalyDINOModel(masking=masking)  # else anomalib's defaults: 1 neighbour, no coreset
        model.feature_encoder.idx = [len(vit.blocks) - 1]  # shim: the tiny ViT's last block
        recorded: list[torch.Tensor] = []  # the patch distances the map generator receives
        model.anomaly_map_generator.register_forward_pre_hook(
            lambda _module, inputs, _recorded=recorded: _recorded.append(inputs[0][:, 0].clone())
        )
        references = transform(
            Image(torch.stack([read_image(root / f, as_tensor=True) for f in files[category]]))
        )
        model.train()
        model(references)
        model.fit()
        model.eval()
        memory["reference_images"].append(references)
        memory["memory"].append(model.memory_bank.clone())
        dataset = MVTecADDataset(root=root, category=category, split="test")
        counts.append(len(dataset))
        for i in range(len(dataset)):
            item = dataset[i]
            batch = dataset.collate_fn([item])  # a batch of one, as anomalib's dataloader collates it
            image, mask = transform(batch.image, batch.gt_mask)  # as PreProcessor.on_test_batch_start
            prediction = model(image)
            out["images"].append(image)
            out["masks"].append(mask.float())
            out["labels"].append(item.gt_label.view(1))
            out["distances"].append(recorded.pop())
            out["scores"].append(prediction.pred_score.view(-1))
            out["maps"].append(prediction.anomaly_map[:, 0])
            paths.append(str(Path(item.image_path).relative_to(root)))
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    result["memory_size"] = np.array([len(m) for m in memory["memory"]])
    if masking:
        memory.pop("memory")  # ragged: each category keeps its foreground patches
    result |= {k: torch.stack([torch.as_tensor(x) for x in v]).numpy() for k, v in memory.items()}
    result["masks"] = result["masks"].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    result["labels"] = result["labels"].astype(np.int64)
    result["category_ids"] = np.repeat(np.arange(len(categories)), counts)
    result["paths"] = np.array(paths)
    result["categories"] = np.array(categories)
    result["metrics"] = pw.anomalib_metrics(result, len(categories))
    stack.close()
    return result


COMPARED = ("reference_images", "memory", "images", "masks", "distances", "maps", "scores")


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "a pip --target folder holding anomalib (or a checkout of open-edge-platform/anomalib)",
        "PYTHONPATH entries for the official side (anomalib's dependencies beyond zsad's)",
    )
    if ps.serve_official_side(args, official_outputs):
        return
    root, ours, theirs = ps.few_shot_then_official(
        args, __file__, zsad_outputs, parity_state_dict(), tuple(p for p in (args.official_env,) if p)
    )
    categories = [str(c) for c in ours["categories"]]
    print(
        f"AnomalyDINO ({SHOTS}-shot): anomalib ({args.official}) vs zsad, categories {categories}, "
        f"{len(ours['scores'])} images; references {dict(zip(categories, ours['references'].tolist(), strict=True))}"
    )
    pw.print_comparison(theirs, ours, COMPARED, categories)
    deltas = {name: ps.max_abs_delta(theirs[name], ours[name]) for name in COMPARED}
    deltas["metrics"] = ps.max_abs_delta(theirs["metrics"], ours["metrics"])
    masked = zsad_outputs(root, zsad_config(masking=True))
    print(
        f"with masking=True: memory sizes anomalib {theirs['masked_memory_size'].tolist()}, zsad {masked['memory_size'].tolist()}"
    )
    for name in (*MASKED, "maps"):
        deltas[f"masked_{name}"] = ps.print_delta(f"masked {name}", theirs[f"masked_{name}"], masked[name])
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(parity_state_dict(), root, theirs["paths"], theirs["masks"]),
            categories=ours["categories"],
            references=ours["references"],
            **{name: theirs[name] for name in ("labels", "distances", "scores", "metrics")},
            **sampled(theirs),
            **{f"masked_{name}": theirs[f"masked_{name}"] for name in MASKED},
            masked_maps_sampled=theirs["masked_maps"][MAP_SAMPLES],
        )
    print(ps.json_line("anomalydino", deltas))


if __name__ == "__main__":
    main()
