"""AnoVL parity: the authors' vl_test.py and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_anovl.py --official /tmp/anovl --official-env /tmp/anovl-env [--write-fixture]

``--official`` is a checkout of hq-deng/AnoVL (its folder leads the official side's ``sys.path``, so
``import open_clip`` is the authors' vendored copy); ``--official-env`` holds what vl_test.py imports beyond
zsad's environment (kornia, scikit-image, tabulate, opencv-python-headless, ``setuptools<81`` for
``pkg_resources``; docs/methods.md gives the pip line). Nothing is fetched.

The official side (a subprocess) writes ``meta.json`` with the authors' ``data/mvtec.py`` solver (class list
set to the generated categories) and runs **their ``vl_test.test(args)`` itself**, with the arguments of
``test_zero_shot.sh`` (``--features_list 3 6 9 12 --image_size 240 --adapter True --epoch 5 --seed 111``)
on the 12-block parity CLIP: their ``MVTecDataset`` and ``get_data_transforms`` (bilinear resize), vendored
``create_model_and_transforms`` (the parity state dict loaded into it as it is: the vendored open_clip has
the installed one's key layout), ``encode_text_with_prompt_ensemble``, ``aug`` (22 views), V-V surgery on all
12 blocks, ``LinearLayer``, ``TextAdapter`` + ``loss_func`` + one ``AdamW`` per class for 5 steps per image,
pooling, upsampling and their metrics. What they compute is read, not recomputed: the per-image results and
per-class metrics from ``test``'s own locals (``sys.settrace``), the texts, tokens, views, losses and every
AdamW step's gradients and updated weights through wrappers and torch's global optimizer hooks.

What is changed on the official side, and why:

- **random draws**: the adapter's re-initialisation (their ``weight_reset``: ``nn.Linear``'s
  ``U(-1/sqrt(D), 1/sqrt(D))``) and the feature noise (``torch.normal(0, 0.05 * 1.1, ...)`` in
  ``TextAdapter.aug``) come from the global RNG, interleaved with the views' ``randperm``; neither side can
  replay the other's stream, so both draw them from one generator per image seeded by :func:`draw_seed`,
  in zsad's order (weight, bias, then each step's noise): same distribution, same numbers on both sides;
- the solver's ``os.listdir`` (filesystem order: their TTA carries AdamW state from image to image, so the
  order matters) is sorted, which is the order zsad's index reads;
- ``prompt_ensemble.texture_list`` is the generated texture category (``weave``), so both template sets run;
- Pillow >= 11's refusal of a float64 mask is undone (``parity_support.old_pillow_fromarray``), and
  ``torch.cuda.is_available`` is false: CPU, float32.

zsad's side: its datamodule with AnoVL's preprocessing, ``AnoVL.text_branch`` and ``scores_and_maps`` (what
``predict`` does) with its ``TestTimeAdaptation`` (default ``tta.reset=image_keep_optimizer``) and seeds
``draw_seed(relative path)``, and zsad's metrics.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import types
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402
from torch.optim.optimizer import (  # noqa: E402
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

FIXTURE = ps.FIXTURES / "anovl.npz"
MODEL = ps.PARITY_MODEL_12  # their forward puts the V-V surgery on blocks -1..-12
IMAGE_SIZE = 240
FEATURES_LIST = [3, 6, 9, 12]  # test_zero_shot.sh; their map reads patch_tokens[6]: block 12's V-V tokens
TTA_STEPS = 5  # --epoch 5
OFFICIAL_SEED = 111  # --seed 111 (setup_seed): only the unused initialisations and the views' order
TEXTURES = ("weave",)  # a texture category on both sides: its prompts use the texture media
DRAWS_SEED = 5
NUM_VIEWS = 22
# vl_test.py's per-class table, in its order; zsad's counterparts are in zsad_metrics
METRICS = (
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_ap",
    "aupro_cflow",
    "image_auroc",
    "image_f1_max",
    "image_aupr",
)
OFFICIAL_METRIC_LISTS = (
    "auroc_px_ls",
    "f1_px_ls",
    "ap_px_ls",
    "aupro_ls",
    "auroc_sp_ls",
    "f1_sp_ls",
    "ap_sp_ls",
)
# vl_test.py's image "AP" column is auc(recall, precision) (trapezoids); zsad's image AP is the step-wise
# sum of the ZSAD papers (sklearn's average_precision_score): a definition, compared but not expected equal
AGREEING_METRICS = METRICS[:-1]
IMAGE_METRIC_COLUMNS = [METRICS.index(m) for m in ("image_auroc", "image_f1_max")]
PIXEL_METRIC_COLUMNS = [METRICS.index(m) for m in ("pixel_auroc", "pixel_f1_max", "pixel_ap", "aupro_cflow")]
MAP_SAMPLES = np.s_[:, ::12, ::12]
TTA_SAMPLES = np.s_[..., ::160]
ADAMW_EPS = 1e-8  # torch.optim.AdamW's default, both sides
GRADIENT_ATOL = 1e-8  # TTA gradients (at most 3.2e-5 here) carry float32 noise of a few 1e-9


def draw_seed(relative_path: str) -> int:
    """The seed of an image's random draws (adapter initialisation, noise) on both sides: from its path
    below the dataset root, so the fixture does not depend on where the files were written."""
    return DRAWS_SEED * 1_000_003 + zlib.crc32(relative_path.encode())


@contextlib.contextmanager
def optimizer_steps() -> Iterator[dict[str, list[list[np.ndarray]]]]:
    """Every optimizer step taken inside (torch's global optimizer hooks): the gradients before it and the
    parameters after it, per adapted image: the weight and bias of one image's adapter flattened and
    concatenated. The authors' adapter is one image's ``nn.Linear`` (weight ``[2K, D]``); zsad's stacks one
    adapter per image along a leading dimension (weight ``[B, 2K, D]``, bias ``[B, 2K]``)."""
    steps: dict[str, list[list[np.ndarray]]] = {"grads": [], "weights": []}

    def per_image(optimizer, value: Callable[[torch.Tensor], torch.Tensor]) -> list[np.ndarray]:
        weight, bias = (value(p).detach() for group in optimizer.param_groups for p in group["params"])
        if weight.dim() == 2:
            weight, bias = weight[None], bias[None]
        return [
            torch.cat([w.flatten(), b.flatten()]).numpy().copy() for w, b in zip(weight, bias, strict=True)
        ]

    pre = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: steps["grads"].append(per_image(opt, lambda p: p.grad))
    )
    post = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: steps["weights"].append(per_image(opt, lambda p: p))
    )
    try:
        yield steps
    finally:
        pre.remove()
        post.remove()


def per_image_steps(records: list[list[np.ndarray]], num_images: int) -> np.ndarray:
    """``[images, steps, parameters]`` from :func:`optimizer_steps`' records: one optimizer per image at
    a time (the authors', zsad's default) gives steps in image order, one optimizer for the whole batch
    (zsad's ``tta.reset=image``) all images at every step."""
    if all(len(record) == 1 for record in records):
        return np.stack([record[0] for record in records]).reshape(num_images, TTA_STEPS, -1)
    return np.stack([np.stack(record) for record in records], axis=1)


def zsad_config(**overrides):
    from lightning_modules.anovl import AnoVLConfig
    from lightning_modules.clip.config import BackboneConfig

    cfg = AnoVLConfig(
        backbone=BackboneConfig(name=MODEL, pretrained=None, image_size=IMAGE_SIZE),
        texture_categories=list(TEXTURES),
    )
    for key, value in overrides.items():
        target = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return cfg


def zsad_metrics(maps, masks, scores, labels) -> list[float]:
    """zsad's counterparts of vl_test.py's per-class table (:data:`METRICS`)."""
    from lightning_modules.metrics import binary_auroc, binary_average_precision, f1_max, legacy_cflow_aupro

    return [
        binary_auroc(maps, masks),
        f1_max(maps, masks),
        binary_average_precision(maps, masks),
        legacy_cflow_aupro(maps, masks, fpr_limit=0.3),
        binary_auroc(scores, labels),
        f1_max(scores, labels),
        binary_average_precision(scores, labels),
    ]


def own_metrics_agreement(official: np.ndarray, ours: dict[str, np.ndarray]) -> tuple[float, float, Any, Any]:
    """How zsad's metrics of its own maps and scores (``ours``) compare with the official table: the largest
    |delta| of the image metrics, of the pixel metrics but the cflow AUPRO, and that AUPRO's per-category
    |delta| with its derived tolerance (:func:`parity_support.cflow_aupro_agreement`)."""
    delta = np.abs(ours["metrics"] - official)
    cflow = METRICS.index("aupro_cflow")
    others = [c for c in PIXEL_METRIC_COLUMNS if c != cflow]
    cflow_delta, tolerance = ps.cflow_aupro_agreement(
        official[:, cflow], ours["metrics"][:, cflow], ours["maps"], ours["masks"], ours["category_ids"]
    )
    return delta[:, IMAGE_METRIC_COLUMNS].max(), delta[:, others].max(), cflow_delta, tolerance


def per_category_metrics(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """``[C, len(METRICS)]``: zsad's metrics on one side's maps and image scores, per category."""
    rows = []
    for c in range(len(outputs["categories"])):
        sel = outputs["category_ids"] == c
        maps, masks = torch.from_numpy(outputs["maps"][sel]), torch.from_numpy(outputs["masks"][sel] > 0.5)
        scores, labels = (
            torch.from_numpy(outputs["image_scores"][sel]),
            torch.from_numpy(outputs["labels"][sel]),
        )
        rows.append(zsad_metrics(maps, masks, scores, labels))
    return np.asarray(rows)


def weights_agree(
    official_grads: np.ndarray, official_weights: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Per element ``[images, steps, parameters]``: the adapter's weights after each AdamW step within
    ``1e-6 + sum over the image's steps so far of lr * GRADIENT_ATOL / (|g| + eps)``.

    Why: both sides re-initialise the weights per image from the same draws, so a weight's difference is
    the sum of its updates' differences. An update ``lr * m/(sqrt(v) + eps)`` turns a gradient difference
    ``dg`` into about ``lr * dg / (|g| + eps)``: negligible where ``|g|`` is large, but up to
    ``lr * dg / eps`` (1e-4 for ``dg = 1e-9``) where the gradient is near AdamW's eps (1e-8), which the
    random-weight CLIP's flat loss (about ln 4) produces for many elements. The 1e-6 covers
    float rounding and the moments carried over from the category's earlier images.
    """
    from lightning_modules.anovl import TTAConfig

    sensitivity = TTAConfig.lr * GRADIENT_ATOL / (np.abs(official_grads.astype(np.float64)) + ADAMW_EPS)
    tolerance = 1e-6 + np.cumsum(sensitivity, axis=1)
    return np.abs(official_weights.astype(np.float64) - weights) <= tolerance


def zsad_outputs(root: Path, cfg=None, views: bool = True) -> dict[str, np.ndarray]:
    """zsad on the files under ``root``: inputs, texts, features, scores, maps, TTA, metrics and, with
    ``views``, the embeddings of the 22 views (a second pass through the ViT)."""
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.anovl import AnoVL, AnoVLModule
    from lightning_modules.anovl.model import anovl_views
    from lightning_modules.registry import get_method

    clip, tokenizer = ps.parity_clip(name=MODEL)
    cfg = cfg or zsad_config()
    model = AnoVL(cfg, clip, tokenizer)
    module = AnoVLModule(cfg, model=model)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        get_method("anovl").preprocessing(cfg, "synthetic"),
    )
    module.bind_data(data)
    batch = next(iter(data.test_dataloader()))
    images, masks, labels, ids = batch["image"], batch["mask"], batch["label"], batch["category_id"]
    paths = [str(Path(p).relative_to(root)) for p in batch["image_path"]]
    categories = module.batch_categories(batch)
    text = module.batch_text(categories)
    seeds = [draw_seed(p) for p in paths]
    with optimizer_steps() as steps:  # model.predict in two steps, for the pooled grid
        out = model.text_branch(images, text, tta=module.tta, seeds=seeds, categories=categories)
    scores, maps = model.scores_and_maps(out, tuple(masks.shape[-2:]))
    features = out.features
    texts = [module.category_text(c) for c in data.categories]
    n = len(paths)
    result = {
        "paths": np.array(paths),
        "categories": np.array(list(data.categories)),
        "category_ids": ids.numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": masks.numpy(),
        "text_classes": torch.stack([t.classes for t in texts]).numpy(),
        "text_prompts": torch.stack([t.prompts for t in texts]).numpy(),
        "class_embedding": features.class_embedding.numpy(),
        "tokens": features.patch_tokens.numpy(),
        "image_scores": scores.numpy(),
        "grids": out.grid.detach().numpy(),
        "maps": maps.detach().numpy(),
        "tta_losses": torch.stack(module.tta.last_losses, dim=1).numpy(),
        "tta_grads": per_image_steps(steps["grads"], n),
        "tta_weights": per_image_steps(steps["weights"], n),
    }
    if views:
        with torch.no_grad():
            embeddings = model.image_embedding(model.plain_vision(anovl_views(images)).class_token)
        result["view_embeddings"] = embeddings.reshape(NUM_VIEWS, n, -1).numpy()
    return result | {"metrics": per_category_metrics(result)}


# --- the official side (a subprocess with the checkout first on sys.path) ------------------------------
@contextlib.contextmanager
def locals_of(function: Callable, names: tuple[str, ...]) -> Iterator[dict[str, list[Any]]]:
    """The objects bound to the local ``names`` of ``function`` while it runs (``sys.settrace``, per line),
    distinct objects in order: vl_test.test keeps its results in locals and rebinds ``results`` to the
    printed table at its end, so the dict is the first binding."""
    seen: dict[str, list[Any]] = {name: [] for name in names}
    code = function.__code__

    def local(frame, event, arg):
        for name in names:
            value = frame.f_locals.get(name)
            if value is not None and not any(v is value for v in seen[name]):
                seen[name].append(value)
        return local

    previous = sys.gettrace()
    sys.settrace(lambda frame, event, arg: local if frame.f_code is code else None)
    try:
        yield seen
    finally:
        sys.settrace(previous)


class _SeededDraws:
    """The official side's random draws of the TTA, from the current image's generator (see the module
    docstring): ``weight_reset`` replaces vl_test's, ``normal`` model.py's ``torch.normal``."""

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None

    def start_image(self, relative_path: str) -> None:
        self.generator = torch.Generator().manual_seed(draw_seed(relative_path))

    def weight_reset(self, module: torch.nn.Module) -> None:
        if isinstance(module, torch.nn.Linear):  # nn.Linear.reset_parameters' bounds, zsad's draw order
            bound = 1.0 / math.sqrt(module.in_features)
            with torch.no_grad():
                for p in (module.weight, module.bias):
                    p.copy_((torch.rand(p.shape, generator=self.generator) * 2 - 1) * bound)

    def normal(self, mean: float, std: float, size) -> torch.Tensor:
        """model.py's ``torch.normal(0, std, shape)``, as zsad draws it: ``randn(shape) * std``."""
        return torch.randn(size, generator=self.generator) * std + mean


class _ModuleWith:
    """A module with some attributes replaced (for an official module's ``torch`` or ``F``)."""

    def __init__(self, module: types.ModuleType, **replaced) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced[name] if name in self._replaced else getattr(self._module, name)


class OfficialRun:
    """The authors' test loop (``vl_test.test`` or ``vis_test.test``) run on the parity model and images,
    and what it computes, recorded: the dataset items, the text ensemble, the class tokens of each
    ``encode_image`` call, the map layer's tokens, the TTA losses and the final map's pooled grids; the
    TTA's random draws come from :class:`_SeededDraws`."""

    def __init__(self, root: Path, weights: Path) -> None:
        self.root, self.weights = root, weights
        self.items: list[dict[str, Any]] = []
        self.texts: Any = None
        self.encoded: list[torch.Tensor] = []
        self.tokens: dict[int, torch.Tensor] = {}
        self.losses: list[float] = []
        self.grids: list[torch.Tensor] = []  # per image [tiles, h, w] (vl_test.py: one)
        self.draws = _SeededDraws()

    def patches(self, open_clip, dataset_class, script, official_model) -> list[tuple[Any, str, Any]]:
        """``(target, attribute, replacement)``: the parity model, the recording wrappers, the seeded draws
        and the CPU."""
        create, getitem = open_clip.create_model_and_transforms, dataset_class.__getitem__
        encode_texts, resize_tokens, loss_func = (
            script.encode_text_with_prompt_ensemble,
            script.resize_tokens,
            script.loss_func,
        )

        def create_parity_model(name, img_size, pretrained=None, **kwargs):
            model, train_transform, val_transform = create(name, img_size, pretrained=None, **kwargs)
            model.load_state_dict(torch.load(self.weights, weights_only=True))
            encode_image = model.encode_image

            def recorded_encode_image(image, out_layers, normalize=False):
                pooled, tokens = encode_image(image, out_layers, normalize)
                self.encoded.append(pooled[:, 0].detach().clone())
                return pooled, tokens

            model.encode_image = recorded_encode_image
            return model, train_transform, val_transform

        def recorded_getitem(dataset, index):
            item = getitem(dataset, index)
            relative = str(Path(item["img_path"]).relative_to(self.root))
            self.items.append({"path": relative, "img": item["img"], "mask": item["img_mask"]})
            self.draws.start_image(relative)
            return item

        def recorded_encode_texts(*args, **kwargs):
            self.texts = encode_texts(*args, **kwargs)
            return self.texts

        def recorded_resize_tokens(x):
            self.tokens[len(self.items) - 1] = x.detach().clone()
            return resize_tokens(x)

        def recorded_loss_func(pred):
            loss = loss_func(pred)
            self.losses.append(float(loss))
            return loss

        def recorded_interpolate(grid, *args, **kwargs):
            if grid.shape[1] == 1:  # the final map's pooled grids (the views' and TTA's maps: 2 channels)
                self.grids.append(grid[:, 0].detach().clone())
            return torch.nn.functional.interpolate(grid, *args, **kwargs)

        return [
            (open_clip, "create_model_and_transforms", create_parity_model),
            (dataset_class, "__getitem__", recorded_getitem),
            (script, "encode_text_with_prompt_ensemble", recorded_encode_texts),
            (script, "resize_tokens", recorded_resize_tokens),
            (script, "loss_func", recorded_loss_func),
            (script, "weight_reset", self.draws.weight_reset),
            (official_model, "torch", _ModuleWith(torch, normal=self.draws.normal)),
            (script, "F", _ModuleWith(torch.nn.functional, interpolate=recorded_interpolate)),
            (script.torch.cuda, "is_available", lambda: False),
        ]

    def run(self, script, patches, config_path: Path, dataset: str, seed: int):
        """``script.test(args)`` with the arguments of the authors' command line for ``dataset``; returns
        the optimizer steps (:func:`optimizer_steps`) and ``test``'s locals (:func:`locals_of`)."""
        args = types.SimpleNamespace(
            data_path=str(self.root),
            save_path=str(config_path.parent / "results"),
            config_path=str(config_path),
            dataset=dataset,
            model=MODEL,
            pretrained="parity",  # not loaded: create_parity_model loads the parity weights
            features_list=list(FEATURES_LIST),
            few_shot_features=[3, 6, 9],
            image_size=IMAGE_SIZE,
            mode="zero_shot",
            adapter=True,
            epoch=TTA_STEPS,
            k_shot=10,
            seed=seed,
        )
        script.setup_seed(args.seed)
        with contextlib.ExitStack() as stack:
            for target, name, value in patches:
                stack.enter_context(mock.patch.object(target, name, value))
            steps = stack.enter_context(optimizer_steps())
            local = stack.enter_context(locals_of(script.test, ("results", *OFFICIAL_METRIC_LISTS)))
            script.test(args)
        return steps, local


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    import open_clip  # the authors' vendored copy (the official folder leads PYTHONPATH)

    assert Path(open_clip.__file__).is_relative_to(official), open_clip.__file__
    import dataset
    import model as official_model
    import prompt_ensemble
    import utils
    import vl_test
    from data import mvtec

    categories = list(ps.CATEGORIES)
    mvtec.os = types.SimpleNamespace(listdir=lambda path: sorted(os.listdir(path)))
    solver = mvtec.MVTecSolver(root=str(root))
    solver.CLSNAMES = categories
    solver.run()
    prompt_ensemble.texture_list = list(TEXTURES)
    dataset.Image.fromarray = ps.old_pillow_fromarray(dataset.Image.fromarray)
    ps.register_parity_model(MODEL, open_clip)
    work = root.parent / "official"  # their log.txt and the parity model config, beside the images
    config_path = ps.write_model_config(work, name=MODEL)

    run, perms = OfficialRun(root, weights), []

    def recorded_randperm(n, *args, **kwargs):
        perm = torch.randperm(n, *args, **kwargs)
        perms.append(perm.clone())
        return perm

    patches = run.patches(open_clip, dataset.MVTecDataset, vl_test, official_model)
    patches.append((utils, "torch", _ModuleWith(torch, randperm=recorded_randperm)))
    steps, local = run.run(vl_test, patches, config_path, "mvtec", OFFICIAL_SEED)
    return _official_result(run, perms, steps, local, categories)


def _official_result(run: OfficialRun, perms, steps, local, categories) -> dict[str, np.ndarray]:
    results = next(v for v in local["results"] if isinstance(v, dict))
    n = len(run.items)
    paths = [item["path"] for item in run.items]
    text_prompts, text_prompts_list = run.texts
    encoded = run.encoded  # per image: the 22 views, then the image itself
    views = []
    for i in range(n):
        embeddings = torch.nn.functional.normalize(encoded[2 * i], dim=-1)
        unpermuted = torch.empty_like(embeddings)
        unpermuted[perms[i]] = embeddings  # aug's last line: views[randperm]
        views.append(unpermuted)
    return {
        "paths": np.array(paths),
        "categories": np.array(categories),
        "category_ids": np.array([categories.index(c) for c in results["cls_names"]]),
        "labels": np.array(results["gt_sp"]),
        "images": torch.cat([item["img"][None] for item in run.items]).numpy(),
        "masks": np.stack([m[0, 0].numpy() for m in results["imgs_masks"]]),
        "text_classes": torch.stack([text_prompts[c].T for c in categories]).numpy(),
        "text_prompts": torch.stack(
            [torch.cat([text_prompts_list[c][..., 0], text_prompts_list[c][..., 1]]) for c in categories]
        ).numpy(),
        "class_embedding": torch.stack(
            [torch.nn.functional.normalize(encoded[2 * i + 1][0], dim=-1) for i in range(n)]
        ).numpy(),
        "view_embeddings": torch.stack(views, dim=1).numpy(),
        "tokens": torch.cat([run.tokens[i] for i in range(n)]).numpy(),
        "image_scores": np.array(results["pr_sp"]),
        "grids": torch.cat(run.grids).numpy(),
        "maps": np.stack([m[0] for m in results["anomaly_maps"]]),
        "tta_losses": np.array(run.losses).reshape(n, TTA_STEPS),
        "tta_grads": per_image_steps(steps["grads"], n),
        "tta_weights": per_image_steps(steps["weights"], n),
        "metrics": np.array([local[name][-1] for name in OFFICIAL_METRIC_LISTS]).T,
    }


# --- comparison ------------------------------------------------------------------------------------------
def kept_samples(outputs: dict[str, np.ndarray], tokens: Any, tta: Any) -> dict[str, np.ndarray]:
    """What both AnoVL fixtures keep (the full arrays are megabytes): the texts' class embeddings, class
    embeddings, the ``tokens`` sample of the patch tokens, the pooled grids (the maps are their
    upsampling), every 12th row and column of the maps, image scores, the TTA losses and the ``tta`` sample
    of each step's gradients and weights."""
    kept = ("text_classes", "class_embedding", "image_scores", "grids", "tta_losses")
    return {k: outputs[k] for k in kept} | {
        "tokens_sampled": outputs["tokens"][tokens],
        "maps_sampled": outputs["maps"][MAP_SAMPLES],
        "tta_grads_sampled": outputs["tta_grads"][tta],
        "tta_weights_sampled": outputs["tta_weights"][tta],
    }


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`kept_samples` (every 8th patch token's every 2nd element, every 160th TTA element) plus every
    16th prompt embedding and every 4th element of the view embeddings."""
    return kept_samples(outputs, np.s_[:, ::8, ::2], TTA_SAMPLES) | {
        "text_prompts_sampled": outputs["text_prompts"][:, ::16],
        "view_embeddings_sampled": outputs["view_embeddings"][:, :, ::4],
    }


def main() -> None:
    quantities = ("images", "masks", "text_classes", "text_prompts", "class_embedding", "view_embeddings")
    quantities += ("tokens", "image_scores", "grids", "maps", "tta_losses", "tta_grads", "tta_weights")
    run_parity(__doc__, __file__, "vl_test.py", zsad_outputs, official_outputs, quantities, FIXTURE, sampled)


def run_parity(
    doc, script, official_script, zsad_side, official_side, quantities, fixture, sample, write=None
) -> None:
    """A parity script's command line (``doc``, ``script``): in the subprocess, ``official_side``; else
    zsad's side (``zsad_side``) on the images ``write`` makes (default: MVTec layout), the official side
    in a subprocess, then :func:`compare_and_store`."""
    args = ps.parity_arguments(
        doc, "checkout of hq-deng/AnoVL", "PYTHONPATH entries the official side needs (kornia, ...)"
    )
    if ps.serve_official_side(args, official_side):
        return
    root, ours, theirs = ps.zsad_then_official(  # the checkout first: its open_clip shadows zsad's
        args,
        script,
        zsad_side,
        ps.parity_state_dict(name=MODEL),
        (str(args.official.resolve()), args.official_env),
        **({"write": write} if write else {}),
    )
    title = f"AnoVL: {official_script} ({args.official}) vs zsad"
    compare_and_store(args, title, root, ours, theirs, quantities, fixture, sample)


def compare_and_store(args, title, root, ours, theirs, quantities, fixture, sample) -> None:
    """Print max |delta| of ``quantities``, the TTA weights' agreement and the per-category metrics of
    both sides (and zsad's metrics on their maps); with ``--write-fixture`` store ``sample(theirs)``,
    the inputs' identity and fingerprints in ``fixture``."""
    n = len(ours["paths"])
    print(f"{title}, {n} images, {TTA_STEPS} TTA steps each")
    if theirs["paths"].tolist() != ours["paths"].tolist():
        raise SystemExit(
            f"the two sides read the files in another order: {theirs['paths']} vs {ours['paths']}"
        )
    for name in ("category_ids", "labels"):
        if not np.array_equal(theirs[name], ours[name]):
            raise SystemExit(f"{name} differ: {theirs[name]} vs {ours[name]}")
    for name in quantities:
        ps.print_delta(name, theirs[name], ours[name])
    agree = weights_agree(theirs["tta_grads"], theirs["tta_weights"], ours["tta_weights"])
    print(f"  TTA weights within tolerance: {agree.sum()} of {agree.size} (see weights_agree)")
    on_theirs = per_category_metrics(theirs)
    for m, metric in enumerate(METRICS):
        ps.print_delta(f"{metric} (per category)", theirs["metrics"][:, m], ours["metrics"][:, m])
        ps.print_delta("  zsad's metric on their maps", theirs["metrics"][:, m], on_theirs[:, m])
        if metric == "aupro_cflow":
            ps.print_cflow_agreement(
                theirs["metrics"][:, m],
                ours["metrics"][:, m],
                ours["maps"],
                ours["masks"],
                ours["category_ids"],
            )
    if args.write_fixture:
        ps.save_fixture(
            fixture,
            **ps.input_record(ps.parity_state_dict(name=MODEL), root, theirs["paths"], theirs["masks"]),
            categories=theirs["categories"],
            category_ids=theirs["category_ids"],
            labels=theirs["labels"],
            metrics=theirs["metrics"],
            **sample(theirs),
        )


if __name__ == "__main__":
    main()
