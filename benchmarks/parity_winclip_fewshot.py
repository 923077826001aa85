"""WinCLIP+ (few-shot) parity: anomalib's WinCLIP with reference images and zsad's on the same tiny
random-weight CLIP, the same image files and the same K reference images per category.

    python benchmarks/parity_winclip_fewshot.py --official /tmp/anomalib --official-env /tmp/anomalib-env [--write-fixture]

The checkout and environment of benchmarks/parity_winclip.py (docs/methods.md). The references are zsad's
few-shot protocol draw (:data:`SHOTS` normal training images per category, seed :data:`SEED`, draw 0) of
the parity images written with :data:`~parity_support.FEW_SHOT_TRAIN_IMAGES` training images per
category; the official side receives the same file list. anomalib's side reads each reference with its
``read_image``, applies ``WinClip.configure_pre_processor()``'s transform to the K images of a category
as one batch and calls ``WinClipModel.setup(category, references)`` (its ``_collect_visual_embeddings``:
the references' window and patch embeddings), then runs the model on every test image as the zero-shot
script does (``MVTecADDataset``, the pre-processor, ``WinClipModel``, anomalib's metrics). zsad reads the
references with its ``ReferenceImages`` (WinCLIP's preprocessing), ``WinCLIP.set_references`` and
``predict``. Prints max |delta| per quantity; ``--write-fixture`` stores the official outputs in
tests/fixtures/parity/winclip_fewshot.npz (tests/lightning_modules/winclip/test_winclip_fewshot_parity.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import parity_winclip as pw  # noqa: E402
import torch  # noqa: E402

from datamodules import AnomalyDataModule, DataConfig  # noqa: E402
from lightning_modules.category_module import category_words  # noqa: E402
from lightning_modules.ops import l2_normalize  # noqa: E402
from lightning_modules.registry import get_method  # noqa: E402
from lightning_modules.winclip import WinCLIP, WinCLIPConfig  # noqa: E402

FIXTURE = ps.FIXTURES / "winclip_fewshot.npz"
SHOTS, SEED = 2, 111
REFERENCE_SAMPLES = np.s_[:, :, ::8, ::8]  # the fixture keeps every 8th row and column of the references


def datamodule(root: Path, cfg: WinCLIPConfig) -> AnomalyDataModule:
    return AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=4),
        pw.IMAGE_SIZE,
        get_method("winclip").preprocessing(cfg, "synthetic"),
    )


def reference_files(root: Path, draw: int = 0) -> dict[str, list[str]]:
    """The protocol's references of the parity images (category -> files below the root)."""
    cfg = pw.zsad_config()
    return datamodule(root, cfg).reference_draws(SHOTS, SEED, draw + 1)[draw].files()


@torch.no_grad()
def zsad_outputs(root: Path, cfg: WinCLIPConfig | None = None, draw: int = 0) -> dict[str, np.ndarray]:
    """zsad's references, memory, few-shot maps, maps, image scores and per-category metrics."""
    model, tokenizer = ps.parity_clip()
    cfg = cfg or pw.zsad_config()
    winclip = WinCLIP(cfg, model, tokenizer)
    data = datamodule(root, cfg)
    winclip.set_classes(category_words(data))
    references = data.reference_images(data.reference_draws(SHOTS, SEED, draw + 1)[draw])
    reference_images, patch_memory, window_memory = [], [], {size: [] for size in cfg.window_sizes}
    for category_id, category in enumerate(data.categories):
        images = references.images(category)
        winclip.set_references(category_id, images)
        reference_images.append(images)
        patches, windows = winclip.memory[category_id]
        patch_memory.append(patches)
        for size, memory in zip(cfg.window_sizes, windows, strict=True):
            window_memory[size].append(memory)
    out: dict[str, list] = {k: [] for k in ("masks", "labels", "category_ids", "few_shot", "scores", "maps")}
    paths = []
    for batch in data.test_dataloader():
        images, ids = batch["image"], batch["category_id"]
        _, patches = winclip.encode(images)
        out["few_shot"].append(winclip.few_shot_scores(ids, patches, winclip.window_embeddings(images)))
        scores, maps = winclip.predict(images, ids, (pw.IMAGE_SIZE, pw.IMAGE_SIZE))
        out["scores"].append(scores)
        out["maps"].append(maps)
        out["masks"].append(batch["mask"])
        out["labels"].append(batch["label"])
        out["category_ids"].append(ids)
        paths.extend(str(Path(p).relative_to(root)) for p in batch["image_path"])
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    grid = winclip.vision.grid
    result["few_shot"] = result["few_shot"].reshape(-1, grid, grid)
    result |= {
        "paths": np.array(paths),
        "categories": np.array(data.categories),
        "references": np.array([references.draw.files()[c] for c in data.categories]),
        "reference_images": torch.stack(reference_images).numpy(),
        "patch_memory": torch.stack(patch_memory).numpy(),
        **{f"window_memory_{s}": torch.stack(m).numpy() for s, m in window_memory.items()},
    }
    result["metrics"] = pw._per_category_metrics(result)
    return result | sampled(result)


MEMORIES = ("patch_memory", "window_memory_2", "window_memory_3")


def sampled(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps of the large arrays: every 5th map pixel, every 8th reference pixel, every
    4th memory row."""
    shape = r["reference_images"].shape
    references = r["reference_images"].reshape(-1, *shape[-3:])
    return {
        "maps_sampled": r["maps"][pw.MAP_SAMPLES],
        "reference_images_sampled": references[REFERENCE_SAMPLES],
        **{f"{name}_sampled": r[name][:, ::4] for name in MEMORIES},
    }


@torch.no_grad()
def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    """anomalib's reading, pre-processor and WinClipModel with reference images (setup), on the same files."""
    files = ps.official_references(weights)
    categories = list(ps.CATEGORIES)
    with pw._official_imports(official):
        from anomalib.data.datasets.image.mvtecad import MVTecADDataset
        from anomalib.data.utils import read_image
        from anomalib.models.image.winclip import torch_model
        from anomalib.models.image.winclip.lightning_model import WinClip
        from torchvision.tv_tensors import Image

    model, _ = ps.parity_clip(torch.load(weights, weights_only=True))
    with mock.patch.object(
        torch_model.open_clip, "create_model_and_transforms", return_value=(model, None, None)
    ):
        winclip = torch_model.WinClipModel(scales=(2, 3))
    transform = WinClip.configure_pre_processor().transform
    out: dict[str, list] = {k: [] for k in ("labels", "few_shot", "scores", "maps", "masks")}
    memory: dict[str, list] = {
        k: [] for k in ("reference_images", "patch_memory", "window_memory_2", "window_memory_3")
    }
    paths, counts = [], []
    for category in categories:
        references = transform(
            Image(torch.stack([read_image(root / f, as_tensor=True) for f in files[category]]))
        )
        winclip.setup(category, references)
        memory["reference_images"].append(references)
        memory["patch_memory"].append(_normalized_rows(winclip.patch_embeddings))
        for size, embeddings in zip((2, 3), winclip.visual_embeddings, strict=True):
            memory[f"window_memory_{size}"].append(_normalized_rows(embeddings))
        dataset = MVTecADDataset(root=root, category=category, split="test")
        counts.append(len(dataset))
        for i in range(len(dataset)):
            item = dataset[i]
            batch = dataset.collate_fn([item])
            image, mask = transform(batch.image, batch.gt_mask)
            _, window_embeddings, patch_embeddings = winclip.encode_image(image)
            out["few_shot"].append(winclip._compute_few_shot_scores(patch_embeddings, window_embeddings))
            prediction = winclip(image)
            out["scores"].append(prediction.pred_score)
            out["maps"].append(prediction.anomaly_map)
            out["masks"].append(mask.float())
            out["labels"].append(item.gt_label.view(1))
            paths.append(str(Path(item.image_path).relative_to(root)))
    result = {k: torch.cat(v).numpy() for k, v in out.items()}
    result |= {k: torch.stack(v).numpy() for k, v in memory.items()}
    result["masks"] = result["masks"].reshape(-1, pw.IMAGE_SIZE, pw.IMAGE_SIZE)
    result["labels"] = result["labels"].astype(np.int64)
    result["category_ids"] = np.repeat(np.arange(len(categories)), counts)
    result["paths"] = np.array(paths)
    result["categories"] = np.array(categories)
    result["metrics"] = pw.anomalib_metrics(result, len(categories))
    return result


def _normalized_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """``[K, M, D]`` -> ``[K*M, D]``, L2-normalised (anomalib normalises inside its cosine similarity)."""
    return l2_normalize(embeddings.reshape(-1, embeddings.shape[-1]).float())


COMPARED = (
    "reference_images",
    "patch_memory",
    "window_memory_2",
    "window_memory_3",
    "few_shot",
    "maps",
    "scores",
)


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "checkout of open-edge-platform/anomalib",
        "PYTHONPATH entries for the official side (its pinned open_clip)",
    )
    if ps.serve_official_side(args, official_outputs):
        return

    root, ours, theirs = ps.few_shot_then_official(
        args,
        __file__,
        zsad_outputs,
        ps.parity_state_dict(),
        (args.official_env, str(args.official / "src")),
    )
    categories = [str(c) for c in ours["categories"]]
    print(
        f"WinCLIP+ ({SHOTS}-shot): anomalib ({args.official}) vs zsad, categories {categories}, "
        f"{len(ours['scores'])} images; references {dict(zip(categories, ours['references'].tolist(), strict=True))}"
    )
    pw.print_comparison(theirs, ours, COMPARED, categories)
    if args.write_fixture:
        kept = ("labels", "few_shot", "scores", "metrics")
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(ps.parity_state_dict(), root, theirs["paths"], theirs["masks"]),
            categories=ours["categories"],
            references=ours["references"],
            **{name: theirs[name] for name in kept},
            **sampled(theirs),
        )


if __name__ == "__main__":
    main()
