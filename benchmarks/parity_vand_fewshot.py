"""VAND few-shot parity: the authors' ``test.py --mode few_shot`` and zsad's k-shot memory bank on the same tiny
random-weight CLIP, heads, image files and K reference images per category.

    python benchmarks/parity_vand_fewshot.py --official /tmp/vand --official-env /tmp/vand-env [--write-fixture]

The checkout and environment of benchmarks/parity_vand.py (docs/methods.md). The references are zsad's
few-shot protocol draw (:data:`SHOTS` normal training images per category, seed :data:`SEED`, draw 0) of the
parity images written with :data:`~parity_support.FEW_SHOT_TRAIN_IMAGES` training images per category.

The official side runs their ``test.test(args)`` whole, as ``python test.py --mode few_shot --k_shot 2
--features_list 3 6 9 12 --few_shot_features 3 6 9 12 --image_size 240`` would (their ``memory()``, their
per-image loop, their metric loop), on CPU in float32. What it is given: ``meta.json`` from their
``data/mvtec.py`` solver whose ``train`` lists are the protocol's references, and their dataset's
``torch.randint(0, n, (k,))`` draw answered with ``0..k-1`` (their own draw samples with replacement from
all training images; the protocol's is seeded and recorded: a protocol choice, not the method's), the
parity weights as ``--pretrained FILE``, the heads as ``--checkpoint_path``, the model registered under a
name containing "ViT" (their code branches on it), and the CPU shim of benchmarks/parity_vand.py. What is
read back, without changing their code: the memory bank ``memory()`` returns, each image's final map (the
argument of their ``normalize`` for the visualisation), the image scores their metric loop hands
``roc_auc_score`` (the few-shot combination: ``(p + min-max normalised map maximum) / 2`` per class), and
the metrics it computes. zsad: ``VAND.set_references`` on the protocol's references read with VAND's
preprocessing, ``predict``, and the evaluator's category rule (``FEW_SHOT_SCORE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import parity_vand as pv  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "vand_fewshot.npz"
SHOTS, SEED = 2, 111
OFFICIAL_MODEL = "ViT-zsad-parity-240-12"  # their code takes the ViT branch only for a name with "ViT"
COMPARED = ("memory", "maps", "image_scores")


def zsad_outputs(root: Path, draw: int = 0, few_shot: bool = True) -> dict[str, np.ndarray]:
    """zsad's references, memory bank, final maps, category-combined image scores and metrics (in the order
    of zsad's loader); ``few_shot=False``: the same without references (the zero-shot maps and scores)."""
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.clip.config import BackboneConfig
    from lightning_modules.metrics import binary_auroc, binary_average_precision, legacy_cflow_aupro
    from lightning_modules.registry import get_method
    from lightning_modules.vand import VAND, VANDConfig
    from lightning_modules.vand.model import FEW_SHOT_SCORE

    model, tokenizer = ps.parity_clip(pv.vand_state_dict(), ps.PARITY_MODEL_12)
    cfg = VANDConfig(
        backbone=BackboneConfig(
            name=ps.PARITY_MODEL_12,
            pretrained=None,
            image_size=pv.IMAGE_SIZE,
            pos_embed_interpolation="bicubic",
        ),
        feature_layers=list(pv.FEATURE_LAYERS),
        few_shot_layers=list(pv.FEATURE_LAYERS),
        fp16_autocast=False,
        mosaic_rate=0.0,
        cache_features=False,
    )
    vand = VAND(cfg, model, tokenizer)
    heads = pv.heads_state_dict(vand.vision.width, vand.vision.output_dim)
    vand.heads.load_state_dict({k.removeprefix("fc."): v for k, v in heads.items()})
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        pv.IMAGE_SIZE,
        get_method("vand").preprocessing(cfg, "synthetic"),
    )
    vand.set_classes(list(data.categories))
    draws = data.reference_draws(SHOTS, SEED, draw + 1)
    references = data.reference_images(draws[draw])
    if few_shot:
        for category_id, category in enumerate(data.categories):
            vand.set_references(category_id, references.images(category))
    batch = next(iter(data.test_dataloader()))
    images, ids, masks, labels = batch["image"], batch["category_id"], batch["mask"], batch["label"]
    with torch.no_grad():
        scores, maps = vand.predict(images, ids, (pv.IMAGE_SIZE, pv.IMAGE_SIZE))
    if few_shot:
        combined = torch.empty(len(ids))
        for c in range(len(data.categories)):
            combined[ids == c] = FEW_SHOT_SCORE.combine(scores[ids == c])
        scores = combined
    rows = []
    for c in range(len(data.categories)):
        sel = ids == c
        rows.append(
            [
                binary_auroc(maps[sel], masks[sel]),
                binary_auroc(scores[sel], labels[sel]),
                binary_average_precision(scores[sel], labels[sel]),
                binary_average_precision(maps[sel], masks[sel]),
                legacy_cflow_aupro(maps[sel], masks[sel], fpr_limit=0.3),
            ]
        )
    memory = [torch.stack(vand.memory[c]) for c in range(len(data.categories))] if few_shot else []
    return {
        "paths": np.array([str(Path(p).relative_to(root)) for p in batch["image_path"]]),
        "categories": np.array(data.categories),
        "references": np.array([references.draw.files()[c] for c in data.categories]),
        "category_ids": ids.numpy(),
        "labels": labels.numpy(),
        "masks": masks.numpy(),
        "memory": torch.stack(memory).numpy() if memory else np.zeros(0),  # [C, layers, K*N, width]
        "maps": maps.numpy(),
        "image_scores": scores.numpy(),
        "metrics": np.asarray(rows),
    }


class _Recorder:
    """Wraps a function of the authors' module: calls it unchanged and keeps its arguments and result."""

    def __init__(self, function) -> None:
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        result = self.function(*args, **kwargs)
        self.calls.append((args, result))
        return result


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    """Their test.test(args) in few-shot mode on the protocol's references (module docstring)."""
    import open_clip  # the authors' vendored copy (the official folder leads PYTHONPATH)
    import open_clip.transformer as vendored_transformer
    from data.mvtec import MVTecSolver

    assert Path(open_clip.__file__).is_relative_to(official), open_clip.__file__
    vendored_transformer.torch = pv._CpuZeros()
    import dataset
    import test

    dataset.Image.fromarray = ps.old_pillow_fromarray(dataset.Image.fromarray)
    work = weights.parent
    config = ps.write_model_config(work / "configs", ps.PARITY_MODELS[ps.PARITY_MODEL_12], OFFICIAL_MODEL)
    open_clip.add_model_config(config)
    checkpoint = work / "heads.pth"
    model_config = ps.PARITY_MODELS[ps.PARITY_MODEL_12]
    heads = pv.heads_state_dict(model_config["vision_cfg"]["width"], model_config["embed_dim"])
    torch.save({"trainable_linearlayer": heads}, checkpoint)
    files = ps.official_references(weights)
    solver = MVTecSolver(root=str(root))
    solver.CLSNAMES = list(ps.CATEGORIES)
    solver.run()
    meta = json.loads((root / "meta.json").read_text())
    by_path = {item["img_path"]: item for items in meta["train"].values() for item in items}
    meta["train"] = {c: [by_path[f] for f in files[c]] for c in solver.CLSNAMES}
    (root / "meta.json").write_text(json.dumps(meta, indent=4))
    args = argparse.Namespace(
        data_path=str(root),
        save_path=str(work / "official_results"),
        checkpoint_path=str(checkpoint),
        config_path=str(config),
        dataset="mvtec",
        model=OFFICIAL_MODEL,
        pretrained=str(weights),
        features_list=list(pv.FEATURE_LAYERS),
        few_shot_features=list(pv.FEATURE_LAYERS),
        image_size=pv.IMAGE_SIZE,
        mode="few_shot",
        k_shot=SHOTS,
        seed=10,
    )
    recorded = {name: _Recorder(getattr(test, name)) for name in ("memory", "normalize", "roc_auc_score")}
    recorded |= {
        name: _Recorder(getattr(test, name)) for name in ("average_precision_score", "cal_pro_score")
    }

    def first_k(low, high, size, **kwargs):  # their draw, answered with the protocol's (module docstring)
        return torch.arange(size[0])

    with mock.patch.multiple(test, **recorded), mock.patch.object(dataset.torch, "randint", first_k):
        test.setup_seed(args.seed)
        test.test(args)
    (bank,) = (result for _, result in recorded["memory"].calls)
    test_items = dataset.MVTecDataset(str(root), None, None, aug_rate=-1, mode="test").data_all
    classes = [item["cls_name"] for item in test_items]
    auroc, ap = recorded["roc_auc_score"].calls, recorded["average_precision_score"].calls
    pro = recorded["cal_pro_score"].calls
    image_scores = np.empty(len(test_items))
    rows = []
    for c, category in enumerate(solver.CLSNAMES):  # their metric loop: per class px, sp AUROC; sp, px AP
        image_scores[[i for i, name in enumerate(classes) if name == category]] = auroc[2 * c + 1][0][1]
        rows.append([auroc[2 * c][1], auroc[2 * c + 1][1], ap[2 * c][1], ap[2 * c + 1][1], pro[c][1]])
    return {
        "paths": np.array([item["img_path"] for item in test_items]),
        "memory": torch.stack([torch.stack(bank[c]) for c in solver.CLSNAMES]).numpy(),
        "maps": np.stack([args[0] for args, _ in recorded["normalize"].calls]),
        "image_scores": image_scores,
        "metrics": np.asarray(rows),
    }


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of ByChelsea/VAND-APRIL-GAN", "PYTHONPATH entries the official side needs"
    )
    if ps.serve_official_side(args, official_outputs):
        return

    root, ours, theirs = (
        ps.few_shot_then_official(  # the checkout first: its vendored open_clip shadows zsad's
            args,
            __file__,
            zsad_outputs,
            pv.vand_state_dict(),
            (str(args.official.resolve()), args.official_env),
        )
    )
    categories = ours["categories"].tolist()
    print(
        f"VAND {SHOTS}-shot: APRIL-GAN test.py ({args.official}) vs zsad, {len(ours['paths'])} images; "
        f"references {dict(zip(categories, ours['references'].tolist(), strict=True))}"
    )
    if not np.array_equal(np.sort(theirs["paths"]), np.sort(ours["paths"])):
        raise SystemExit("the two sides read different files")
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]  # zsad's order
    theirs["maps"], theirs["image_scores"] = theirs["maps"][order], theirs["image_scores"][order]
    for name in COMPARED:
        ps.print_delta(name, theirs[name], ours[name])
    for m, metric in enumerate(pv.METRICS):
        ps.print_delta(f"{metric} (per category)", theirs["metrics"][:, m], ours["metrics"][:, m])
    cflow = pv.METRICS.index("aupro_cflow")
    ps.print_cflow_agreement(
        theirs["metrics"][:, cflow],
        ours["metrics"][:, cflow],
        ours["maps"],
        ours["masks"],
        ours["category_ids"],
    )
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(pv.vand_state_dict(), root, ours["paths"], ours["masks"]),
            categories=ours["categories"],
            references=ours["references"],
            labels=ours["labels"],
            **sampled(theirs),
        )


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps: image scores and metrics, every 16th memory row, every 10th map pixel."""
    return {
        "image_scores": outputs["image_scores"],
        "metrics": outputs["metrics"],
        "memory_sampled": outputs["memory"][:, :, ::16],
        "maps_sampled": outputs["maps"][:, ::10, ::10],
    }


if __name__ == "__main__":
    main()
