"""AnoVL on VisA: the authors' vis_test.py and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_anovl_visa.py --official /tmp/anovl --official-env /tmp/anovl-env [--write-fixture]

As ``parity_anovl.py`` (same checkout, environment, 12-block parity CLIP, seeded TTA draws and recording
hooks), on a VisA-layout copy of the parity images resized to 130 x 100 (landscape, as VisA's; 240 x 312
after the short-side resize, two tiles 72 px apart): the official side writes ``meta.json`` as their
``data/visa.py`` does (class list set to the generated categories: it needs pandas, which zsad's
environment lacks, so its loop is done here, same keys, same order) and runs **their ``vis_test.test(args)``**
with the arguments of their README (``--dataset visa --features_list 3 6 9 12 --image_size 240 --adapter
True --epoch 5 --seed 42``): ``VisaDataset`` with ``Resize(240)`` (short side, no crop), ``image_tiling`` /
``image_recover``, the tiles' class tokens as image score, the ``D x D`` ``Adapter`` with ``loss_func`` on the
merged upsampled maps and one ``AdamW`` per class, and their metrics. Changed on their side, as for MVTec
AD: the random draws (adapter initialisation, then each step's noise, from one generator per image),
Pillow >= 11's float64 mask, and CUDA off.

zsad's side: its VisA parser and datamodule with AnoVL's VisA preprocessing
(the AnoVL spec's ``preprocessing`` on VisA), ``vis_test_predict`` with its ``TiledAdaptation`` and zsad's
metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_anovl as pa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "anovl_visa.npz"
VISA_FILE_SIZE = (130, 100)  # W, H of the VisA-layout copies (landscape)
OFFICIAL_SEED = 42  # their README's vis_test.py line
TTA_SAMPLES = np.s_[..., ::40]


def write_visa_images(folder: Path) -> Path:
    """The parity images (:func:`parity_support.write_parity_images`) in VisA's raw layout under
    ``folder / "visa"``, 130 x 100."""
    from datamodules.synthetic import write_visa_layout

    return write_visa_layout(ps.write_parity_images(folder / "mvtec"), folder / "visa", size=VISA_FILE_SIZE)


def zsad_outputs(root: Path, cfg=None) -> dict[str, np.ndarray]:
    """zsad on the VisA-layout files under ``root``: inputs, texts, tile features, scores, maps, TTA,
    metrics (images one at a time, as the test loop feeds them under vis_test)."""
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.anovl import AnoVL, AnoVLModule
    from lightning_modules.anovl.tiled_visa import tile_pair, vis_test_predict
    from lightning_modules.registry import get_method

    clip, tokenizer = ps.parity_clip(name=pa.MODEL)
    cfg = cfg or pa.zsad_config()
    model = AnoVL(cfg, clip, tokenizer)
    module = AnoVLModule(cfg, model=model)
    data = AnomalyDataModule(
        DataConfig(name="visa", root=str(root), num_workers=0),
        pa.IMAGE_SIZE,
        get_method("anovl").preprocessing(cfg, "visa"),  # vis_test.py's short-side resize
    )
    module.bind_data(data)
    rows: dict[str, list[Any]] = {k: [] for k in ("paths", "ids", "labels", "images", "masks")}
    rows |= {k: [] for k in ("class_embedding", "tokens", "scores", "grids", "maps", "losses")}
    with pa.optimizer_steps() as steps:
        for batch in data.test_dataloader():
            path = str(Path(batch["image_path"][0]).relative_to(root))
            categories = module.batch_categories(batch)
            text = module.batch_text(categories)
            generators = [torch.Generator().manual_seed(pa.draw_seed(path))]
            size = tuple(batch["mask"].shape[-2:])
            scores, grids, maps = vis_test_predict(
                model, batch["image"], text.classes, size, module.tiled_tta, generators, categories
            )
            features = model.encode(tile_pair(batch["image"])[0])
            for key, value in (
                ("paths", path),
                ("ids", int(batch["category_id"][0])),
                ("labels", int(batch["label"][0])),
                ("images", batch["image"][0].numpy()),
                ("masks", batch["mask"][0].numpy()),
                ("class_embedding", features.class_embedding.numpy()),
                ("tokens", features.patch_tokens.numpy()),
                ("scores", float(scores[0])),
                ("grids", grids[0].detach().numpy()),
                ("maps", maps[0].detach().numpy()),
                ("losses", list(module.tiled_tta.last_losses) if module.tiled_tta else []),
            ):
                rows[key].append(value)
    texts = [module.category_text(c) for c in data.categories]
    n = len(rows["paths"])
    result = {
        "paths": np.array(rows["paths"]),
        "categories": np.array(list(data.categories)),
        "category_ids": np.array(rows["ids"]),
        "labels": np.array(rows["labels"]),
        "images": np.stack(rows["images"]),
        "masks": np.stack(rows["masks"]),
        "text_classes": torch.stack([t.classes for t in texts]).numpy(),
        "class_embedding": np.stack(rows["class_embedding"]),
        "tokens": np.stack(rows["tokens"]),
        "image_scores": np.array(rows["scores"]),
        "grids": np.stack(rows["grids"]),
        "maps": np.stack(rows["maps"]),
        "tta_losses": np.array(rows["losses"]),
        "tta_grads": pa.per_image_steps(steps["grads"], n),
        "tta_weights": pa.per_image_steps(steps["weights"], n),
    }
    return result | {"metrics": pa.per_category_metrics(result)}


# --- the official side (a subprocess with the checkout first on sys.path) ------------------------------
def write_meta(root: Path, categories: list[str]) -> None:
    """``meta.json`` as the authors' ``data/visa.py`` builds it from ``split_csv/1cls.csv``."""
    lines = (root / "split_csv" / "1cls.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in lines]
    info: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for phase in info:
        for cls_name in categories:
            info[phase][cls_name] = [
                {
                    "img_path": image,
                    "mask_path": mask if label == "anomaly" else "",
                    "cls_name": cls_name,
                    "specie_name": "",
                    "anomaly": 1 if label == "anomaly" else 0,
                }
                for obj, split, label, image, mask in rows
                if obj == cls_name and split == phase
            ]
    (root / "meta.json").write_text(json.dumps(info, indent=4) + "\n")


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    import open_clip  # the authors' vendored copy (the official folder leads PYTHONPATH)

    assert Path(open_clip.__file__).is_relative_to(official), open_clip.__file__
    import dataset
    import model as official_model
    import prompt_ensemble
    import vis_test

    categories = list(ps.CATEGORIES)
    write_meta(root, categories)
    prompt_ensemble.texture_list = list(pa.TEXTURES)
    dataset.Image.fromarray = ps.old_pillow_fromarray(dataset.Image.fromarray)
    ps.register_parity_model(pa.MODEL, open_clip)
    config_path = ps.write_model_config(root.parent / "official", name=pa.MODEL)
    run = pa.OfficialRun(root, weights)
    patches = run.patches(open_clip, dataset.VisaDataset, vis_test, official_model)
    steps, local = run.run(vis_test, patches, config_path, "visa", OFFICIAL_SEED)
    results = next(v for v in local["results"] if isinstance(v, dict))
    n = len(run.items)
    text_prompts, _ = run.texts
    return {
        "paths": np.array([item["path"] for item in run.items]),
        "categories": np.array(categories),
        "category_ids": np.array([categories.index(c) for c in results["cls_names"]]),
        "labels": np.array(results["gt_sp"]),
        "images": torch.stack([item["img"] for item in run.items]).numpy(),
        "masks": np.stack([m[0, 0].numpy() for m in results["imgs_masks"]]),
        "text_classes": torch.stack([text_prompts[c].T for c in categories]).numpy(),
        "class_embedding": torch.stack(
            [torch.nn.functional.normalize(e, dim=-1) for e in run.encoded]
        ).numpy(),
        "tokens": torch.stack([run.tokens[i] for i in range(n)]).numpy(),
        "image_scores": np.array(results["pr_sp"]),
        "grids": torch.stack(run.grids).numpy(),
        "maps": np.stack([m[0] for m in results["anomaly_maps"]]),
        "tta_losses": np.array(run.losses).reshape(n, pa.TTA_STEPS),
        "tta_grads": pa.per_image_steps(steps["grads"], n),
        "tta_weights": pa.per_image_steps(steps["weights"], n),
        "metrics": np.array([local[name][-1] for name in pa.OFFICIAL_METRIC_LISTS]).T,
    }


# --- comparison ------------------------------------------------------------------------------------------
def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`parity_anovl.kept_samples`: both tiles' every 8th patch token's every 2nd element, every
    40th element of each TTA step's gradients and weights (the ``D x D`` adapter is small)."""
    return pa.kept_samples(outputs, np.s_[:, :, ::8, ::2], TTA_SAMPLES)


def main() -> None:
    quantities = ("images", "masks", "text_classes", "class_embedding", "tokens", "image_scores")
    quantities += ("grids", "maps", "tta_losses", "tta_grads", "tta_weights")
    pa.run_parity(
        __doc__,
        __file__,
        "vis_test.py",
        zsad_outputs,
        official_outputs,
        quantities,
        FIXTURE,
        sampled,
        write=write_visa_images,
    )


if __name__ == "__main__":
    main()
