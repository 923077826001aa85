"""WinCLIP parity: anomalib's WinCLIP and zsad on the same tiny random-weight CLIP and the same image files.

    python benchmarks/parity_winclip.py --official /tmp/anomalib --official-env /tmp/anomalib-env [--write-fixture]

``--official`` is a checkout of open-edge-platform/anomalib (its ``src/`` goes on the official side's
``sys.path``); ``--official-env`` holds anomalib's dependencies beyond zsad's and its pinned open_clip
(``pip install --target /tmp/anomalib-env``, docs/methods.md lists them); nothing is fetched. The official
side runs in a subprocess and reads the files with anomalib's
``MVTecADDataset`` (``read_image``/``read_mask``), applies ``WinClip.configure_pre_processor()``'s
transform to image and mask as its ``PreProcessor`` does, runs ``WinClipModel`` (the class's own text
embeddings, windows and harmonic aggregation) and scores with anomalib's AUROC / AUPR / AUPRO; zsad reads
the same files with its datamodule (WinCLIP's preprocessing) and runs ``WinCLIP`` with
``prompt_ensemble=winclip_anomalib`` (anomalib's 21 templates; zsad's default is the paper's 22) and its
own metrics. Prints max |delta| per quantity; ``--write-fixture`` stores the official outputs in
tests/fixtures/parity/winclip.npz (tests/lightning_modules/winclip/test_winclip_parity.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

from datamodules import AnomalyDataModule, DataConfig  # noqa: E402
from lightning_modules.category_module import category_words  # noqa: E402
from lightning_modules.clip.config import BackboneConfig  # noqa: E402
from lightning_modules.metrics import aupro, binary_auroc, binary_average_precision  # noqa: E402
from lightning_modules.registry import get_method  # noqa: E402
from lightning_modules.winclip import WinCLIP, WinCLIPConfig  # noqa: E402

FIXTURE = ps.FIXTURES / "winclip.npz"
METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
IMAGE_SIZE = 240  # anomalib's WinClip pre-processor resizes to 240 x 240 whatever the model
MAP_SAMPLES = np.s_[:, ::5, ::5]  # the fixture keeps every 5th row and column of each map (48 x 48)


def zsad_config(**overrides) -> WinCLIPConfig:
    """WinCLIP as zsad runs it, with anomalib's prompt list (the one thing zsad sets otherwise by default)."""
    cfg = WinCLIPConfig(
        backbone=BackboneConfig(name=ps.PARITY_MODEL, pretrained=None, image_size=IMAGE_SIZE),
        prompt_ensemble="winclip_anomalib",
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _metrics(scores, labels, maps, masks) -> np.ndarray:
    return np.array(
        [
            binary_auroc(scores, labels),
            binary_average_precision(scores, labels),
            binary_auroc(maps, masks),
            binary_average_precision(maps, masks),
            aupro(maps, masks, fpr_limit=0.3),
        ]
    )


@torch.no_grad()
def zsad_outputs(root: Path, cfg: WinCLIPConfig | None = None) -> dict[str, np.ndarray]:
    """zsad's inputs, texts, embeddings, window scores, maps, image scores and per-category metrics."""
    model, tokenizer = ps.parity_clip()
    cfg = cfg or zsad_config()
    winclip = WinCLIP(cfg, model, tokenizer)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=4),
        IMAGE_SIZE,
        get_method("winclip").preprocessing(cfg, "synthetic"),
    )
    winclip.set_classes(category_words(data))
    out: dict[str, list] = {k: [] for k in ("images", "masks", "labels", "category_ids", "image_embeddings")}
    out.update({k: [] for k in ("window_scores_2", "window_scores_3", "scores", "maps")})
    for batch in data.test_dataloader():
        images, ids = batch["image"], batch["category_id"]
        text = winclip.class_text_for(ids)
        out["images"].append(images)
        out["masks"].append(batch["mask"])
        out["labels"].append(batch["label"])
        out["category_ids"].append(ids)
        out.setdefault("paths", []).extend(str(Path(p).relative_to(root)) for p in batch["image_path"])
        out["image_embeddings"].append(winclip.image_embedding(winclip.vision(images).class_token))
        for size, scores in zip(cfg.window_sizes, winclip.window_scores(images, text), strict=True):
            out[f"window_scores_{size}"].append(scores)
        scores, maps = winclip.predict(images, ids, (IMAGE_SIZE, IMAGE_SIZE))
        out["scores"].append(scores)
        out["maps"].append(maps)
    paths = out.pop("paths")
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    result["paths"] = np.array(paths)
    result["text"] = winclip.class_text.numpy()
    result["categories"] = np.array(data.categories)
    result["metrics"] = _per_category_metrics(result)
    result["maps_sampled"] = result["maps"][MAP_SAMPLES]
    return result


def _per_category_metrics(r: dict[str, np.ndarray], prefix: str = "") -> np.ndarray:
    """``[C, len(METRICS)]`` from the arrays ``r[prefix + name]`` of one side."""
    rows = []
    for c in range(len(r["categories"])):
        sel = r["category_ids"] == c
        maps, masks = torch.from_numpy(r[prefix + "maps"][sel]), torch.from_numpy(r["masks"][sel])
        rows.append(
            _metrics(
                torch.from_numpy(r[prefix + "scores"][sel]), torch.from_numpy(r["labels"][sel]), maps, masks
            )
        )
    return np.stack(rows)


@contextmanager
def _official_imports(official: Path):
    sys.path.insert(0, str(official / "src"))
    try:
        yield
    finally:
        sys.path.remove(str(official / "src"))


@torch.no_grad()
def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    """anomalib's loader, pre-processor, WinClipModel and metrics on the same files and weights (run in
    the official environment: anomalib's open_clip, whose ViT takes sequence-first tokens)."""
    categories = list(ps.CATEGORIES)
    with _official_imports(official):
        from anomalib.data.datasets.image.mvtecad import MVTecADDataset
        from anomalib.models.image.winclip import torch_model
        from anomalib.models.image.winclip.lightning_model import WinClip

    model, _ = ps.parity_clip(torch.load(weights, weights_only=True))
    with mock.patch.object(
        torch_model.open_clip, "create_model_and_transforms", return_value=(model, None, None)
    ):
        winclip = torch_model.WinClipModel(scales=(2, 3))
    transform = WinClip.configure_pre_processor().transform
    out: dict[str, list] = {
        k: [] for k in ("images", "masks", "labels", "image_embeddings", "scores", "maps")
    }
    out.update({"window_scores_2": [], "window_scores_3": [], "text": []})
    for category in categories:
        winclip.setup(category)
        text = torch.nn.functional.normalize(winclip.text_embeddings, dim=-1)
        out["text"].append(text)
        dataset = MVTecADDataset(root=root, category=category, split="test")
        for i in range(len(dataset)):
            item = dataset[i]
            batch = dataset.collate_fn([item])  # a batch of one, as anomalib's dataloader collates it
            image, mask = transform(batch.image, batch.gt_mask)  # as PreProcessor.on_test_batch_start
            image_embedding, window_embeddings, _ = winclip.encode_image(image)
            prediction = winclip(image)
            out["images"].append(image)
            out["masks"].append(mask.float())
            out["labels"].append(item.gt_label.view(1))
            out.setdefault("paths", []).append(str(Path(item.image_path).relative_to(root)))
            out["image_embeddings"].append(torch.nn.functional.normalize(image_embedding, dim=-1))
            for size, windows in zip((2, 3), window_embeddings, strict=True):
                scores = torch_model.class_scores(windows, winclip.text_embeddings, winclip.temperature, 1)
                out[f"window_scores_{size}"].append(scores)
            out["scores"].append(prediction.pred_score)
            out["maps"].append(prediction.anomaly_map)
    paths = out.pop("paths")
    result = {k: torch.cat(v).numpy() if k != "text" else torch.stack(v).numpy() for k, v in out.items()}
    result["paths"] = np.array(paths)
    result["masks"] = result["masks"].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    result["labels"] = result["labels"].astype(np.int64)
    counts = [len(MVTecADDataset(root=root, category=c, split="test")) for c in categories]
    result["category_ids"] = np.repeat(np.arange(len(categories)), counts)
    result["metrics"] = anomalib_metrics(result, len(categories))
    return result


def anomalib_metrics(result: dict[str, np.ndarray], n_categories: int) -> np.ndarray:
    """``[C, len(METRICS)]``: anomalib's AUROC, AUPR and AUPRO per category of one side's outputs
    (``scores``, ``labels``, ``maps``, ``masks``, ``category_ids``); on the official side only."""
    from anomalib.metrics.aupr import _AUPR
    from anomalib.metrics.aupro import _AUPRO
    from anomalib.metrics.auroc import _AUROC

    metrics = []
    for c in range(n_categories):
        sel = result["category_ids"] == c
        scores, labels = torch.from_numpy(result["scores"][sel]), torch.from_numpy(result["labels"][sel])
        maps, masks = torch.from_numpy(result["maps"][sel]), torch.from_numpy(result["masks"][sel]).int()
        row = []
        for metric, preds, target in (
            (_AUROC(), scores, labels),
            (_AUPR(), scores, labels),
            (_AUROC(), maps, masks),
            (_AUPR(), maps, masks),
            (_AUPRO(fpr_limit=0.3), maps, masks),
        ):
            metric.update(preds, target)
            row.append(float(metric.compute()))
        metrics.append(row)
    return np.asarray(metrics)


COMPARED = (
    "images",
    "masks",
    "text",
    "image_embeddings",
    "window_scores_2",
    "window_scores_3",
    "maps",
    "scores",
    "metrics",
)


def print_comparison(
    theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray], compared: Sequence[str], categories: list[str]
) -> None:
    """Max |delta| of each compared output and metric, and anomalib's metrics per category (after checking
    that both loaders read the files in the same order)."""
    if not np.array_equal(theirs["paths"], ours["paths"]):
        raise SystemExit(f"the loaders read the files in another order: {theirs['paths']} vs {ours['paths']}")
    for name in compared:
        ps.print_delta(name, theirs[name], ours[name])
    for m, metric in enumerate(METRICS):
        ps.print_delta(f"{metric} (per category)", theirs["metrics"][:, m], ours["metrics"][:, m])
    for c, category in enumerate(categories):
        values = ", ".join(f"{m} {v:.6f}" for m, v in zip(METRICS, theirs["metrics"][c], strict=True))
        print(f"  anomalib {category}: {values}")


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "checkout of open-edge-platform/anomalib",
        "PYTHONPATH entries for the official side (its pinned open_clip)",
    )
    if ps.serve_official_side(args, official_outputs):
        return
    root, ours, theirs = ps.zsad_then_official(  # anomalib's dependencies and pinned open_clip, then its src
        args,
        __file__,
        zsad_outputs,
        ps.parity_state_dict(),
        (args.official_env, str(args.official / "src")),
    )
    categories = [str(c) for c in ours["categories"]]
    print(
        f"WinCLIP: anomalib ({args.official}) vs zsad, categories {categories}, {len(ours['scores'])} images"
    )
    print_comparison(theirs, ours, COMPARED[:-1], categories)
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(ps.parity_state_dict(), root, theirs["paths"], theirs["masks"]),
            categories=ours["categories"],
            labels=theirs["labels"],
            **{name: theirs[name] for name in COMPARED if name not in ("images", "masks", "maps")},
            maps_sampled=theirs["maps"][MAP_SAMPLES],  # the full maps do not compress (1.8 MB)
        )


if __name__ == "__main__":
    main()
