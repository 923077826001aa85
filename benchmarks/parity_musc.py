"""MuSc parity: the authors' examples/musc_main.py and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_musc.py --official /tmp/MuSc --official-env /tmp/musc-env [--write-fixture]

``--official`` is a checkout of xrli-U/MuSc (the official side runs in it: their code imports
``./models/backbone`` relative to the working directory); ``--official-env`` holds what their code imports
beyond zsad's environment (``pip install --target /tmp/musc-env scikit-image openpyxl``: their AUPRO and their
unused Excel export). Nothing is fetched.

The official side (a subprocess) runs **their ``examples/musc_main.py`` itself** (``runpy``), with
``configs/musc.yaml`` and the arguments ``--img_resize 240 --feature_layers 2 5 8 11`` (the parity CLIP has
12 blocks: every third, as 5 11 17 23 of 24) and ``--divide_num`` 1, then 2: their ``MVTecDataset``,
open_clip val transform, vendored factory, ``LNAMD``, ``MSM``, ``RsCIN`` and ``compute_metrics``. What they
compute is recorded through wrappers: the dataset items, the tapped tokens, RsCIN's inputs and output and
``compute_metrics``' arguments and results. Their LNAMD, MSM and RsCIN also run on seeded random inputs
(``unit_*`` arrays; tests/lightning_modules/musc/test_musc_parity.py replays them on zsad's functions).

What is changed on the official side, and why (no number changes):

- ``create_model_and_transforms`` gets ``pretrained=None`` and then the parity state dict through their own
  ``resize_pos_embed`` + ``load_state_dict``: what their ``pretrained == 'openai'`` branch does with OpenAI's
  weights (rebuild CLIP at ``img_size`` from the architecture JSON, resize, load), with the parity weights;
- their class list (``_CLASSNAMES`` of MVTec AD) is the generated categories;
- ``torch.cuda.is_available`` is false: CPU, float32 (their autocast is CUDA-only).

zsad's side: its datamodule with MuSc's preprocessing, ``MuSc.extract`` and ``MuSc.score_category`` per
category (subsets from :func:`lightning_modules.musc.model.divide_subsets`), and zsad's metrics.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "musc.npz"
# 12 blocks (their ViT reads block 12's attention), native 160 px without quick_gelu in its JSON, run at 240:
# the position embedding is resized and the MLPs run exact GELU, as ViT-L-14-336 at 518 in their code
MODEL = ps.PARITY_MODEL_OPENAI
ZSAD_MODEL = f"{MODEL}-quickgelu"  # OpenAI-style weights; zsad's activation rule picks GELU at 240
IMAGE_SIZE = 240
FEATURE_LAYERS = [2, 5, 8, 11]
DIVIDE_NUMS = (1, 2)
K_LIST = [1, 2, 3]  # models/musc.py for mvtec_ad
METRICS = (
    "image_auroc",
    "image_f1_max",
    "image_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_ap",
    "aupro_cflow",
)
MAP_SAMPLES = np.s_[:, ::12, ::12]  # every 12th row and column (20 x 20 of 240 x 240)
UNIT_SEED = 11
UNIT_SHAPE = (9, 5, 16)  # images, grid, channels of the unit inputs
UNIT_R = (1, 3, 5)


def write_images(folder: Path) -> Path:
    """More test images per category than the shared parity set: MSM averages the nearest 30% of the
    other images, so a set needs at least 5 (and 2 subsets at least 10)."""
    from datamodules.synthetic import generate_synthetic_dataset

    root = folder / "mvtec"
    generate_synthetic_dataset(
        root,
        seed=ps.IMAGES_SEED,
        style="industrial",
        categories=list(ps.CATEGORIES),
        image_size=ps.IMAGE_FILE_SIZE,
        n_train=1,
        n_test_good=6,
        n_test_defect_per_kind=3,
        overwrite=True,
    )
    return root


def state_dict() -> dict[str, torch.Tensor]:
    return ps.parity_state_dict(name=MODEL)


def unit_inputs() -> dict[str, torch.Tensor]:
    """Seeded inputs of the unit comparison: two layers of tokens, image scores, class embeddings."""
    g = torch.Generator().manual_seed(UNIT_SEED)
    n, grid, c = UNIT_SHAPE
    tokens = torch.randn(2, n, 1 + grid * grid, c, generator=g) * 2 + 0.5
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    embeddings = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
    return {"tokens": tokens, "scores": scores, "embeddings": embeddings}


def zsad_config(**overrides):
    from lightning_modules.clip.config import BackboneConfig
    from lightning_modules.musc.config import MuScConfig

    cfg = MuScConfig(
        backbone=BackboneConfig(
            name=ZSAD_MODEL,
            pretrained=None,
            image_size=IMAGE_SIZE,
            pos_embed_interpolation="bicubic_no_antialias",
        ),
        feature_layers=list(FEATURE_LAYERS),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def zsad_metrics(scores, labels, maps, masks) -> list[float]:
    from lightning_modules.metrics import binary_auroc, binary_average_precision, f1_max, legacy_cflow_aupro

    return [
        binary_auroc(scores, labels),
        f1_max(scores, labels),
        binary_average_precision(scores, labels),
        binary_auroc(maps, masks),
        f1_max(maps, masks),
        binary_average_precision(maps, masks),
        legacy_cflow_aupro(maps, masks, fpr_limit=0.3),
    ]


def zsad_outputs(
    root: Path, cfg=None, model=None, divide_nums: tuple[int, ...] | None = None
) -> dict[str, np.ndarray]:
    """zsad on the files under ``root``, per divide_num: inputs, tokens, maps, scores, metrics per category,
    in the order of the authors' loop (category, then subset, then defect type and file). ``model``: a
    built ``MuSc`` for ``cfg`` (None: on the parity CLIP); ``divide_nums``: None: :data:`DIVIDE_NUMS`, or
    ``cfg.divide_num`` where it is not 1."""
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.musc.model import MuSc, divide_subsets
    from lightning_modules.musc.spec import preprocessing

    cfg = cfg or zsad_config()
    if model is None:
        ps.register_parity_model(ZSAD_MODEL)
        clip, tokenizer = ps.parity_clip(state_dict(), name=ZSAD_MODEL)
        model = MuSc(cfg, clip, tokenizer)
    size = cfg.input_size
    data = AnomalyDataModule(
        DataConfig(
            name="synthetic", root=str(root), num_workers=0, eval_batch_size=4
        ),  # musc.yaml batch_size
        size,
        preprocessing(cfg, "synthetic"),
    )
    batches: dict[str, list] = {k: [] for k in ("images", "masks", "labels", "category_ids", "embeddings")}
    layers: list[list[torch.Tensor]] = [[] for _ in cfg.feature_layers]
    paths: list[str] = []
    for batch in data.test_dataloader():
        tokens, embeddings = model.extract(batch["image"])
        for store, t in zip(layers, tokens, strict=True):
            store.append(t)
        batches["embeddings"].append(embeddings)
        for key, name in (
            ("images", "image"),
            ("masks", "mask"),
            ("labels", "label"),
            ("category_ids", "category_id"),
        ):
            batches[key].append(batch[name])
        paths.extend(str(Path(p).relative_to(root)) for p in batch["image_path"])
    every = {k: torch.cat(v) for k, v in batches.items()}
    tokens = [torch.cat(t) for t in layers]
    result: dict[str, Any] = {"categories": np.array(data.categories)}
    if divide_nums is None:
        divide_nums = (cfg.divide_num,) if cfg.divide_num != 1 else DIVIDE_NUMS
    for divide_num in divide_nums:
        order, scores, maps, rows = [], [], [], []
        for c in range(len(data.categories)):
            members = sorted(np.flatnonzero(every["category_ids"].numpy() == c), key=lambda i: paths[i])
            subsets = divide_subsets(
                [Path(paths[i]).parent.name for i in members], divide_num, cfg.divide_seed
            )
            index = torch.as_tensor(members)
            s, m = model.score_category(
                [t[index] for t in tokens],
                every["embeddings"][index],
                subsets,
                (size, size),
                K_LIST,
            )
            # the authors' order: subset after subset
            within = [i for subset in subsets for i in subset]
            order.extend(members[i] for i in within)
            scores.append(s[within])
            maps.append(m[within])
            rows.append(zsad_metrics(s, every["labels"][index], m.float(), every["masks"][index]))
        order_t = torch.as_tensor(order)
        tag = f"d{divide_num}"
        result[f"{tag}_paths"] = np.array([paths[i] for i in order])
        result[f"{tag}_scores"] = torch.cat(scores).numpy()
        result[f"{tag}_maps"] = torch.cat(maps).numpy()
        result[f"{tag}_metrics"] = np.asarray(rows)
        result[f"{tag}_images"] = every["images"][order_t].numpy()
        result[f"{tag}_masks"] = every["masks"][order_t].numpy().astype(np.int32)
        result[f"{tag}_tokens"] = tokens[0][order_t].numpy()
        result[f"{tag}_layer_tokens"] = np.stack([t[order_t].numpy() for t in tokens])
        result[f"{tag}_embeddings"] = every["embeddings"][order_t].numpy()
    return result


def zsad_unit_outputs() -> dict[str, np.ndarray]:
    """zsad's LNAMD (normalised), MSM and RsCIN on :func:`unit_inputs`."""
    from lightning_modules.musc.scoring import aggregate_neighbourhood, mutual_scores, rescore_images

    inputs = unit_inputs()
    grid = (UNIT_SHAPE[1], UNIT_SHAPE[1])
    out: dict[str, np.ndarray] = {}
    for r in UNIT_R:
        z = torch.stack([aggregate_neighbourhood(t, grid, r) for t in inputs["tokens"]], dim=2)
        out[f"unit_lnamd_{r}"] = z.numpy()
        out[f"unit_msm_{r}"] = mutual_scores(z[:, :, 0].contiguous()).numpy()
    for name, k_list in (("123", [1, 2, 3]), ("189", [1, 8, 9])):
        out[f"unit_rscin_{name}"] = rescore_images(inputs["scores"], inputs["embeddings"], k_list).numpy()
    return out


# --- the official side (a subprocess, working directory = the checkout) --------------------------------
def official_unit_outputs() -> dict[str, np.ndarray]:
    from models.modules._LNAMD import LNAMD
    from models.modules._MSM import MSM
    from models.modules._RsCIN import RsCIN

    inputs = unit_inputs()
    out: dict[str, np.ndarray] = {}
    for r in UNIT_R:
        lnamd = LNAMD(device="cpu", r=r, feature_dim=UNIT_SHAPE[2], feature_layer=[1, 2], patchstride=1)
        z = lnamd._embed(list(inputs["tokens"]))
        z /= z.norm(dim=-1, keepdim=True)  # models/musc.py, after _embed
        out[f"unit_lnamd_{r}"] = z.numpy()
        out[f"unit_msm_{r}"] = MSM(
            Z=z[:, :, 0].contiguous(), device="cpu", topmin_min=0, topmin_max=0.3
        ).numpy()
    for name, k_list in (("123", [1, 2, 3]), ("189", [1, 8, 9])):
        cls = [e.numpy() for e in inputs["embeddings"]]
        out[f"unit_rscin_{name}"] = np.asarray(RsCIN(inputs["scores"].numpy(), cls, k_list=k_list))
    return out


def run_their_main(
    musc: Any,
    dataset_class: Any,
    root: Path,
    model_patch: Callable[[list], tuple[Any, str, Any]],
    backbone_name: str,
    size: int,
    divide_num: int,
    feature_layers: list[int],
    output_dir: Path,
    tokens_dim: int = 0,
) -> dict[str, np.ndarray]:
    """One run of their ``examples/musc_main.py`` on ``root`` (from their checkout's folder, ``mvtec_ad`` with
    the generated categories, on the CPU) with these command-line settings, recording what passes through
    their dataset item, RsCIN and metrics. ``model_patch(tokens)``:
    (target, attribute, replacement) that gives their code the parity model and appends each batch's tokens
    to ``tokens`` (concatenated along ``tokens_dim``)."""
    getitem, rscin, compute_metrics = dataset_class.__getitem__, musc.RsCIN, musc.compute_metrics
    record: dict[str, list] = {
        k: []
        for k in ("paths", "images", "masks", "tokens", "embeddings", "scores", "maps", "labels", "metrics")
    }

    def recorded_getitem(dataset, index):
        item = getitem(dataset, index)
        record["paths"].append(str(Path(item["image_path"]).relative_to(root)))
        record["images"].append(item["image"])
        record["masks"].append(item["mask"])
        return item

    def recorded_rscin(scores, cls_tokens=None, k_list=(0,)):
        out = rscin(scores, cls_tokens, k_list=k_list)
        record["embeddings"].append(np.asarray(cls_tokens))
        record["scores"].append(np.asarray(out))
        return out

    def recorded_metrics(gt_sp, pr_sp, gt_px, pr_px):
        image_metric, pixel_metric = compute_metrics(gt_sp, pr_sp, gt_px, pr_px)
        record["maps"].append(pr_px[:, 0])
        record["labels"].append(gt_sp)
        record["metrics"].append([*image_metric, *pixel_metric])
        return image_metric, pixel_metric

    argv = ["musc_main.py", "--config", "configs/musc.yaml", "--data_path", str(root)]
    argv += ["--dataset_name", "mvtec_ad", "--class_name", "ALL", "--backbone_name", backbone_name]
    argv += ["--img_resize", str(size), "--divide_num", str(divide_num), "--device", "0"]
    argv += ["--output_dir", str(output_dir), "--feature_layers", *(str(layer) for layer in feature_layers)]
    with contextlib.ExitStack() as stack:
        for target, attribute, value in (
            model_patch(record["tokens"]),
            (dataset_class, "__getitem__", recorded_getitem),
            (musc, "RsCIN", recorded_rscin),
            (musc, "compute_metrics", recorded_metrics),
            (musc, "_CLASSNAMES_mvtec_ad", list(ps.CATEGORIES)),
            (torch.cuda, "is_available", lambda: False),
            (sys, "argv", argv),
        ):
            stack.enter_context(mock.patch.object(target, attribute, value))
        runpy.run_path("examples/musc_main.py", run_name="__main__")
    return {
        "paths": np.array(record["paths"]),
        "images": torch.stack(record["images"]).numpy(),
        # their ground truth: the resized mask truncated to int (models/musc.py gt_px)
        "masks": torch.stack(record["masks"])[:, 0].numpy().astype(np.int32),
        "tokens": torch.cat(record["tokens"], dim=tokens_dim).numpy(),
        "embeddings": np.concatenate(record["embeddings"]).astype(np.float32),
        "scores": np.concatenate(record["scores"]),
        "maps": np.concatenate(record["maps"]),
        "labels": np.concatenate(record["labels"]),
        "metrics": np.asarray(record["metrics"], dtype=np.float64),
    }


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    os.chdir(official)
    sys.path.insert(0, str(official))
    import models.backbone.open_clip as open_clip
    import models.musc as musc
    from datasets.mvtec import MVTecDataset
    from models.backbone.open_clip.model import resize_pos_embed

    ps.register_parity_model(MODEL, clip_package=open_clip)
    create = open_clip.create_model_and_transforms

    def model_patch(tokens: list) -> tuple[Any, str, Any]:
        def create_parity_model(name, img_size, pretrained=None, **kwargs):
            model, train_transform, val_transform = create(name, img_size, pretrained=None, **kwargs)
            loaded = torch.load(weights, weights_only=True)
            resize_pos_embed(loaded, model)
            model.load_state_dict(loaded)
            encode_image = model.encode_image

            def recorded_encode_image(image, out_layers, *args, **kwargs):
                pooled, layer_tokens = encode_image(image, out_layers, *args, **kwargs)
                tokens.append(layer_tokens[0].detach().clone())
                return pooled, layer_tokens

            model.encode_image = recorded_encode_image
            return model, train_transform, val_transform

        return open_clip, "create_model_and_transforms", create_parity_model

    result: dict[str, Any] = official_unit_outputs()
    for divide_num in DIVIDE_NUMS:
        output_dir = weights.parent / "official_output"
        run = run_their_main(
            musc, MVTecDataset, root, model_patch, MODEL, IMAGE_SIZE, divide_num, FEATURE_LAYERS, output_dir
        )
        result |= {f"d{divide_num}_{key}": value for key, value in run.items()}
    return result


COMPARED = ("images", "masks", "tokens", "embeddings", "maps", "scores", "metrics")


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "checkout of xrli-U/MuSc",
        "PYTHONPATH entries for the official side (scikit-image, openpyxl)",
    )
    if ps.serve_official_side(args, official_outputs):
        return
    weights = state_dict()
    root, ours, theirs = ps.zsad_then_official(
        args, __file__, zsad_outputs, weights, (args.official_env,), write=write_images
    )
    ours |= zsad_unit_outputs()
    print(f"MuSc: {args.official} vs zsad, categories {list(ours['categories'])}")
    deltas: dict[str, float] = {}
    for name in sorted(k for k in theirs if k.startswith("unit_")):
        deltas[name] = ps.print_delta(name, theirs[name], ours[name])
    for divide_num in DIVIDE_NUMS:
        tag = f"d{divide_num}"
        if not np.array_equal(theirs[f"{tag}_paths"], ours[f"{tag}_paths"]):
            raise SystemExit(
                f"divide_num {divide_num}: another image order: {theirs[f'{tag}_paths']} vs {ours[f'{tag}_paths']}"
            )
        for name in COMPARED:
            deltas[f"{tag}_{name}"] = ps.print_delta(
                f"{tag} {name}", theirs[f"{tag}_{name}"], ours[f"{tag}_{name}"]
            )
        for c, category in enumerate(ours["categories"]):
            values = ", ".join(
                f"{m} {v:.6f}" for m, v in zip(METRICS, theirs[f"{tag}_metrics"][c], strict=True)
            )
            print(f"  authors, divide_num {divide_num}, {category}: {values}")
    if args.write_fixture:
        stored = {k: v for k, v in theirs.items() if k.startswith("unit_")}
        for divide_num in DIVIDE_NUMS:
            tag = f"d{divide_num}"
            stored |= {f"{tag}_{k}": theirs[f"{tag}_{k}"] for k in ("paths", "scores", "labels", "metrics")}
            stored[f"{tag}_maps_sampled"] = theirs[f"{tag}_maps"][MAP_SAMPLES].astype(np.float32)
            stored[f"{tag}_masks_sum"] = ps.mask_sums(theirs[f"{tag}_masks"])
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(weights, root, theirs["d1_paths"], theirs["d1_masks"]),
            categories=ours["categories"],
            **stored,
        )
    print(ps.json_line("musc", deltas))


if __name__ == "__main__":
    main()
