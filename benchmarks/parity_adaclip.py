"""AdaCLIP parity: the authors' code and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_adaclip.py --official /tmp/AdaCLIP --official-env /tmp/adaclip-env [--write-fixture]

``--official`` is a checkout of caoyunkang/AdaCLIP (its folder leads the official side's ``PYTHONPATH``);
``--official-env`` holds what their modules import beyond zsad's environment (docs/methods.md#adaclip:
``setuptools<81`` for ``pkg_resources``, ``opencv-python-headless``, ``pandas``, ``seaborn``,
``tensorboard``). Nothing is fetched.

The official side (a subprocess) writes ``meta.json`` with their ``data_preprocess/mvtec.py`` solver (class
list set to the generated categories), builds their ``AdaCLIP_Trainer`` (their ``AdaCLIP``, ``PromptLayer``,
``ProjectLayer``, ``TextEmbebddingLayer``, ``HybridSemanticFusion``, transforms and AdamW) after
``torch.manual_seed(3)``, saves its initial trainable state with their ``save`` (a file in the format of
their released weights, kept in the fixture and read by zsad through its official-checkpoint reader), reads
the files with their ``MVTecDataset`` (``aug_rate=0``: the mosaic is random) and runs, in float32 on the CPU:

- their ``evaluation`` loop (batch size 1, the only one their code supports): texts, features, HSF, maps
  smoothed with scipy's ``gaussian_filter(sigma=4)``, image scores and their sklearn metrics per class;
- three steps of their ``train_one_batch`` (an anomalous, a normal and another anomalous image): loss,
  every gradient and every parameter after AdamW's update.

Shims on the official side, none changing a number: their ``create_model`` downloads OpenAI's weights, so
the same steps run on the parity weights (their ``CLIP`` built from the model config with the image size
set, their ``resize_pos_embed``, ``load_state_dict(strict=True)``, their ``image_transform``); HSF's
``KMeans`` gets one ``random_state`` per image, the one zsad uses (theirs draws from numpy's global RNG);
``Tensor.norm`` runs on a copy of its input (their in-place ``x /= x.norm(...)`` backpropagates on the GPU,
where autocast hands ``norm`` a float32 copy, but not in float32 on the CPU; same values and gradients);
Pillow >= 11's refusal of a float64 mask is undone as in parity_vand.py; their metrics' ``results`` are read
by wrapping ``calculate_metric``. The parity CLIP (``zsad-parity-adaclip``) has 4 vision and 4 text blocks
(their text prompts need text width = embedding width) and is built at 240 px but run at 288 px, so the
position embedding is interpolated (bicubic, no antialiasing) as at 518 px.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "adaclip.npz"
MODEL = "zsad-parity-adaclip"
MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 240, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}
IMAGE_SIZE = 288  # 18 x 18 patches: the 15 x 15 position embedding is interpolated
FEATURE_LAYERS = [1, 2, 3, 4]  # train.py's rule on 4 blocks
SETTINGS = {"prompting_depth": 4, "prompting_length": 5, "prompting_type": "SD", "prompting_branch": "VL"}
K_CLUSTERS = 20
PROMPTS_SEED = 3
LEARNING_RATE = 0.01
TRAIN_STEPS = ("disc/test/scratch/000.png", "disc/test/good/000.png", "weave/test/hole/000.png")
COMPARED = (
    "images",
    "masks",
    "text",
    "class_feature",
    "patches",
    "fused",
    "image_scores",
    "raw_maps",
    "maps",
)
METRICS = ("pixel_auroc", "pixel_f1", "pixel_ap", "image_auroc", "image_f1", "image_ap")
THEIR_METRICS = ("auroc_px", "f1_px", "ap_px", "auroc_im", "f1_im", "ap_im")  # calculate_metric's keys


ps.PARITY_MODELS[MODEL] = MODEL_CONFIG


def register_model() -> None:
    ps.register_parity_model(MODEL)


def state_dict(seed: int = ps.WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    """open_clip's initialisation of the parity CLIP after ``torch.manual_seed(seed)``."""
    return ps.parity_state_dict(seed, MODEL)


def hsf_seed(path: str, *salt: object) -> int:
    """The k-means seed of one image's HSF, the same on both sides."""
    from datamodules.resumable import derived_seed

    return derived_seed("parity-adaclip-hsf", path, *salt) % 2**32


def zsad_config(backbone_interpolation: str = "bicubic_no_antialias", **overrides):
    from lightning_modules.adaclip import AdaCLIPConfig
    from lightning_modules.clip.config import BackboneConfig

    backbone = BackboneConfig(
        name=MODEL, pretrained=None, image_size=IMAGE_SIZE, pos_embed_interpolation=backbone_interpolation
    )
    settings = {"k_clusters": K_CLUSTERS, "lr": LEARNING_RATE, "mosaic_rate": 0.0, **SETTINGS, **overrides}
    return AdaCLIPConfig(backbone=backbone, **settings)


def named_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def preprocessing():
    """AdaCLIP's preprocessing as its spec declares it (their RGB conversion, then AnomalyCLIP's resize)."""
    from lightning_modules.adaclip.spec import ADACLIP

    return ADACLIP.preprocessing(zsad_config(), "synthetic")


def zsad_module(initial: dict[str, torch.Tensor], **overrides):
    """zsad's AdaCLIP on the parity CLIP, its trainable state read from the authors' initial file."""
    import open_clip

    from lightning_modules.adaclip import AdaCLIP
    from lightning_modules.adaclip.module import AdaCLIPModule
    from lightning_modules.adaclip.official_checkpoint import zsad_state_dict

    register_model()
    cfg = zsad_config(**overrides)
    clip = open_clip.create_model(MODEL, pretrained=None)
    clip.load_state_dict(state_dict())
    module = AdaCLIPModule(cfg, model=AdaCLIP(cfg, clip, open_clip.get_tokenizer(MODEL)))
    module.load_state_dict(zsad_state_dict(module, initial, "parity"), strict=False)
    return module


def zsad_outputs(
    root: Path, initial: dict[str, torch.Tensor], batched: bool = True, **overrides
) -> dict[str, np.ndarray]:
    """zsad on the files under ``root``, starting from the authors' initial trainable state (``batched``:
    also score all images in one batch, to show HSF's sensitivity)."""
    from datamodules import AnomalyDataModule, DataConfig

    module = zsad_module(initial, **overrides)
    model = module.model
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        preprocessing(),
    )
    model.set_classes(list(data.categories))  # prompt_words=authors: the folder names here
    batch = next(iter(data.test_dataloader()))
    paths = [str(Path(p).relative_to(root)) for p in batch["image_path"]]
    images, masks, labels, ids = batch["image"], batch["mask"], batch["label"], batch["category_id"]
    size = (IMAGE_SIZE, IMAGE_SIZE)
    seeds = [hsf_seed(p, "test") for p in paths]
    # one image at a time, as their test loop: HSF's k-means is discontinuous in the patch embeddings, and a
    # batch of 12 changes them by ~1e-7 (other BLAS blocking), which can flip the clusters of an image
    outputs, scores, maps = [], [], []
    with torch.no_grad():
        for i in range(len(paths)):
            one = slice(i, i + 1)
            outputs.append(model(images[one], ids[one], seeds[one]))
            score, smoothed = model.test_outputs(outputs[-1], size)
            scores.append(score)
            maps.append(smoothed)
        batched_scores = model.predict(images, ids, size, seeds)[0] if batched else torch.cat(scores)
    scores, maps = torch.cat(scores), torch.cat(maps)
    result = {
        "paths": np.array(paths),
        "categories": np.array(list(data.categories)),
        "category_ids": ids.numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": masks.numpy(),
        "text": torch.cat([o.texts for o in outputs]).numpy(),
        "class_feature": torch.cat([o.class_feature for o in outputs]).numpy(),
        "patches": torch.stack(
            [torch.cat(layer) for layer in zip(*[o.patches for o in outputs], strict=True)]
        ).numpy(),
        "fused": torch.cat([o.fused for o in outputs]).numpy(),
        "image_scores": scores.numpy(),
        "image_scores_batched": batched_scores.numpy(),
        "raw_maps": torch.cat([o.anomaly_map(size) for o in outputs]).numpy(),
        "maps": maps.numpy(),
    }
    result["metrics"] = metrics_table(
        ids.numpy(), scores.numpy(), labels.numpy(), maps.numpy(), masks.numpy()
    )
    aupro = ps.evaluator_metrics(data.categories, ids, scores, labels, maps, masks)
    result["aupro_names"] = np.array(sorted(k for k in aupro if k.split("/")[1] in ("aupro", "aupro_cflow")))
    result["aupro"] = np.array([aupro[k] for k in result["aupro_names"]])
    # three training steps of batch size 1, as theirs
    optimizer = module.configure_optimizers()
    model.train()
    for step, path in enumerate(TRAIN_STEPS):
        i = paths.index(path)
        optimizer.zero_grad()
        out = model(images[i : i + 1], ids[i : i + 1], [hsf_seed(path, "train", step)])
        losses = model.loss(out, labels[i : i + 1], masks[i : i + 1])
        losses["loss"].backward()
        grads = named_grads(model.prompts)
        optimizer.step()
        result[f"step{step}_loss"] = losses["loss"].detach().numpy()
        result[f"step{step}_image_loss"] = losses["image_loss"].detach().numpy()
        for name, value in grads.items():
            result[f"step{step}_grad.{name}"] = value.numpy()
        for name, value in model.prompts.named_parameters():  # after the update
            result[f"step{step}_param.{name}"] = value.detach().numpy().copy()
    return result


# --- the authors' side -----------------------------------------------------------------------------------
def _copying_norm() -> None:
    """``Tensor.norm`` on a copy: their in-place ``x /= x.norm(...)`` then backpropagates in float32."""
    original = torch.Tensor.norm

    def norm(self, *args, **kwargs):
        return original(self.clone(), *args, **kwargs)

    torch.Tensor.norm = norm


def _their_create_model(weights: dict[str, torch.Tensor]):
    """Their ``create_model_and_transforms`` for a local state dict: what ``create_model`` does after
    ``load_openai_model`` (which downloads OpenAI's file)."""
    from method.clip_model import CLIP, resize_pos_embed
    from method.custom_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, image_transform

    def create_model_and_transforms(model_name, img_size, pretrained=None, **kwargs):
        model_cfg = copy.deepcopy(MODEL_CONFIG)
        model_cfg["vision_cfg"]["image_size"] = img_size
        model = CLIP(**model_cfg, cast_dtype=None)
        state = dict(weights)
        resize_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
        model.visual.image_mean, model.visual.image_std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        size = model.visual.image_size
        train = image_transform(size, is_train=True, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)
        val = image_transform(size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)
        return model, train, val

    return create_model_and_transforms


BPE = "method/bpe_simple_vocab_16e6.txt.gz"


def check_checkout(official: Path) -> None:
    """Their BPE vocabulary is stored with Git LFS: a clone without git-lfs (or a snapshot) has a pointer."""
    if (official / BPE).read_bytes()[:7] == b"version":
        raise SystemExit(
            f"{official / BPE} is a Git LFS pointer: run `git lfs pull` in the checkout, or copy open_clip's "
            "identical file (sha256 924691ac...): cp $(python -c 'import open_clip, os; "
            "print(os.path.dirname(open_clip.__file__))')/bpe_simple_vocab_16e6.txt.gz "
            f"{official / 'method'}/"
        )


def _write_their_meta(official: Path, root: Path, categories: list[str]) -> None:
    """``meta.json`` as their ``data_preprocess/mvtec.py`` writes it, for the given class folders."""
    import importlib.util

    path = official / "data_preprocess" / "mvtec.py"
    spec = importlib.util.spec_from_file_location("their_mvtec_solver", path)
    solver_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(solver_module)
    solver = solver_module.MVTecSolver(root=str(root))
    solver.CLSNAMES = categories
    solver.run()


def their_trainer():
    """Their ``AdaCLIP_Trainer`` with their defaults on the parity CLIP, built after ``torch.manual_seed(3)``
    (``method.trainer.create_model_and_transforms`` must be :func:`_their_create_model`'s)."""
    from method import AdaCLIP_Trainer

    torch.manual_seed(PROMPTS_SEED)
    return AdaCLIP_Trainer(
        backbone=MODEL,
        feat_list=FEATURE_LAYERS,
        input_dim=MODEL_CONFIG["vision_cfg"]["width"],
        output_dim=MODEL_CONFIG["embed_dim"],
        learning_rate=LEARNING_RATE,
        device="cpu",
        image_size=IMAGE_SIZE,
        use_hsf=True,
        k_clusters=K_CLUSTERS,
        **SETTINGS,
    )


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    import dataset.base_dataset as base_dataset
    import method.trainer as trainer_module
    from dataset import MVTecDataset
    from method.adaclip import AdaCLIP, HybridSemanticFusion
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    assert Path(trainer_module.__file__).is_relative_to(official), trainer_module.__file__
    _copying_norm()
    base_dataset.Image.fromarray = ps.old_pillow_fromarray(base_dataset.Image.fromarray)
    trainer_module.create_model_and_transforms = _their_create_model(torch.load(weights, weights_only=True))
    categories = list(ps.CATEGORIES)
    _write_their_meta(official, root, categories)

    # recorders: their features, HSF output and forward output per call; k-means seeds per image
    seeds: list[int] = []
    calls: dict[str, list] = {"features": [], "fused": [], "forward": []}
    original_extract, original_hsf, original_forward = (
        AdaCLIP.extract_feat,
        HybridSemanticFusion.forward,
        AdaCLIP.forward,
    )

    def extract_feat(self, image, cls_name):
        out = original_extract(self, image, cls_name)
        calls["features"].append(
            tuple(x.detach().clone() if torch.is_tensor(x) else [t.detach().clone() for t in x] for x in out)
        )
        return out

    def hsf_forward(self, patch_tokens, anomaly_maps):
        self.cluster_performer.random_state = seeds.pop(0)
        out = original_hsf(self, patch_tokens, anomaly_maps)
        calls["fused"].append(out.detach().clone())
        return out

    def forward(self, image, cls_name, aggregation=True):
        out = original_forward(self, image, cls_name, aggregation)
        if aggregation:
            calls["forward"].append(tuple(x.detach().clone() for x in out))
        return out

    AdaCLIP.extract_feat, HybridSemanticFusion.forward, AdaCLIP.forward = extract_feat, hsf_forward, forward
    recorded: dict[str, dict] = {}
    original_metric = trainer_module.calculate_metric

    def calculate_metric(results, obj):
        recorded["results"] = results
        return original_metric(results, obj)

    trainer_module.calculate_metric = calculate_metric

    model = their_trainer()
    work = Path(tempfile.mkdtemp(prefix="zsad-adaclip-official-"))
    model.save(str(work / "initial.pth"))  # their released weights' format
    initial = torch.load(work / "initial.pth", weights_only=True)
    data = MVTecDataset(
        clsnames=categories,
        transform=model.preprocess,
        target_transform=model.transform,
        aug_rate=0.0,
        root=str(root),
        training=False,
    )
    paths = [d["img_path"] for d in data.data_all]
    result: dict[str, np.ndarray] = {"paths": np.array(paths)}

    # their evaluation loop (batch size 1)
    seeds.extend(hsf_seed(p, "test") for p in paths)
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=False)
    metric_dict = model.evaluation(loader, categories, False, None)
    results = recorded["results"]
    items = [data[i] for i in range(len(data))]
    result |= {
        "cls": np.array(results["cls_names"]),
        "labels": np.array(results["imgs_gts"]).astype(np.int64),
        "images": torch.stack([item["img"] for item in items]).numpy(),
        "masks": np.stack(results["imgs_masks"]),
        "text": torch.cat([f[2] for f in calls["features"]]).float().numpy(),
        "class_feature": torch.cat([f[0] for f in calls["features"]]).numpy(),
        "patches": torch.stack(
            [torch.cat(layer) for layer in zip(*[f[1] for f in calls["features"]], strict=True)]
        ).numpy(),
        "fused": torch.cat(calls["fused"]).numpy(),
        "image_scores": np.array(results["anomaly_scores"], dtype=np.float32),
        "raw_maps": torch.cat([f[0] for f in calls["forward"]]).numpy(),
        "maps": np.stack(results["anomaly_maps"]),
        "metrics": np.array([[metric_dict[c][k] / 100.0 for k in THEIR_METRICS] for c in categories]),
    }

    # three steps of their train_one_batch (batch size 1), recording gradients before each AdamW step
    learnable = {n: p for n, p in model.named_parameters() if any(p is q for q in model.params_to_update)}
    grads: dict[str, torch.Tensor] = {}

    def before_step(optimizer, args, kwargs):
        grads.clear()
        grads.update({n: p.grad.detach().clone() for n, p in learnable.items() if p.grad is not None})

    hook = register_optimizer_step_pre_hook(before_step)
    model.clip_model.train()
    for step, path in enumerate(TRAIN_STEPS):
        seeds.append(hsf_seed(path, "train", step))
        batch = torch.utils.data.default_collate([items[paths.index(path)]])
        loss = model.train_one_batch(batch)
        result[f"step{step}_loss"] = loss.detach().numpy()
        for name, value in grads.items():
            result[f"step{step}_grad.{name}"] = value.numpy()
        for name, value in learnable.items():
            result[f"step{step}_param.{name}"] = value.detach().numpy().copy()
    hook.remove()
    return result | {f"initial.{k}": v.numpy() for k, v in initial.items()}


# --- comparison ------------------------------------------------------------------------------------------
def initial_state(outputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The authors' initial trainable state (their file's entries) from the official outputs or the fixture."""
    return {
        k.removeprefix("initial."): torch.from_numpy(v)
        for k, v in outputs.items()
        if k.startswith("initial.")
    }


def step_tensors(outputs: dict[str, np.ndarray], module, kind: str, step: int) -> dict[str, np.ndarray]:
    """One step's gradients or parameters under zsad's names (``prompts.*``): the official ones (named
    ``clip_model.*``) go through the official-checkpoint reader, zsad's are already named so."""
    from lightning_modules.adaclip.official_checkpoint import is_authors_checkpoint, zsad_state_dict

    prefix = f"step{step}_{kind}."
    entries = {k.removeprefix(prefix): v for k, v in outputs.items() if k.startswith(prefix)}
    if not is_authors_checkpoint(entries):
        return entries
    tensors = {k: torch.from_numpy(v) for k, v in entries.items()}
    if kind == "grad":  # parameters their forward never uses have no gradient: fill them for the reader
        for name, value in initial_state(outputs).items():
            tensors.setdefault(name, torch.zeros_like(value))
    state = zsad_state_dict(module, tensors, "official outputs")
    return {k.removeprefix("model.prompts."): v.numpy() for k, v in state.items()}


def step_deltas(theirs, ours, module) -> dict[str, float]:
    """Max |delta| per step of the loss, all gradients and all parameters after the AdamW update."""
    deltas = {}
    for step in range(len(TRAIN_STEPS)):
        deltas[f"step{step}_loss"] = ps.max_abs_delta(theirs[f"step{step}_loss"], ours[f"step{step}_loss"])
        for kind in ("grad", "param"):
            a, b = step_tensors(theirs, module, kind, step), step_tensors(ours, module, kind, step)
            assert sorted(a) == sorted(b), (sorted(a), sorted(b))
            deltas[f"step{step}_{kind}s"] = max(ps.max_abs_delta(a[k], b[k]) for k in a)
    return deltas


KEPT_STEPS = ("step0_grad.", "step0_param.")  # later steps' tensors are printed, not kept


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps: texts, class and fused features, scores, every 32nd patch of every layer,
    every 9th row and column of the raw and smoothed maps, metrics, every step's loss, the first step's
    gradients and the parameters after it."""
    kept = ("text", "class_feature", "fused", "image_scores", "metrics")
    steps = {k: v for k, v in outputs.items() if k.endswith("_loss") or k.startswith(KEPT_STEPS)}
    return (
        {k: outputs[k] for k in kept}
        | steps
        | {
            "patches_sampled": outputs["patches"][:, :, ::32],
            "raw_maps_sampled": outputs["raw_maps"][:, ::9, ::9],
            "maps_sampled": outputs["maps"][:, ::9, ::9],
        }
    )


def metrics_table(category_ids, scores, labels, maps, masks) -> np.ndarray:
    """zsad's metric functions as their table: per category (auroc_px, f1_px, ap_px, auroc_im, f1_im, ap_im)."""
    from lightning_modules.metrics import binary_auroc, binary_average_precision, f1_max

    rows = []
    for c in range(len(ps.CATEGORIES)):
        sel = np.asarray(category_ids) == c
        px, gt = torch.as_tensor(maps[sel]), torch.as_tensor(masks[sel]) > 0.5
        im, lab = torch.as_tensor(scores[sel]), torch.as_tensor(labels[sel])
        rows.append([binary_auroc(px, gt), f1_max(px, gt), binary_average_precision(px, gt)])
        rows[-1] += [binary_auroc(im, lab), f1_max(im, lab), binary_average_precision(im, lab)]
    return np.asarray(rows)


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of caoyunkang/AdaCLIP", "PYTHONPATH entries the official side needs"
    )
    if ps.serve_official_side(args, official_outputs):
        return
    check_checkout(args.official)
    work = Path(tempfile.mkdtemp(prefix="zsad-parity-adaclip-"))
    root = ps.write_parity_images(work / "mvtec")
    pythonpath = (str(args.official.resolve()), args.official_env)
    theirs = ps.run_official_side(__file__, args.official, root, state_dict(), work, pythonpath)
    initial = initial_state(theirs)
    ours = zsad_outputs(root, initial)
    print(
        f"AdaCLIP: official ({args.official}) vs zsad, {len(ours['paths'])} images, {len(TRAIN_STEPS)} steps"
    )
    if not np.array_equal(np.sort(theirs["paths"]), np.sort(ours["paths"])):
        raise SystemExit("the two sides read different files")
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]  # zsad's order
    for name in ("cls", "labels", *COMPARED):
        theirs[name] = theirs[name][:, order] if name == "patches" else theirs[name][order]
    deltas = {name: ps.print_delta(name, theirs[name], ours[name]) for name in COMPARED}
    batched = np.abs(theirs["image_scores"] - ours["image_scores_batched"])
    print(
        f"  (zsad batched, 12 images at once: image scores within 1e-5 for {int((batched <= 1e-5).sum())} of "
        f"{batched.size}, max |delta| {batched.max():.3e}: k-means of HSF flips on ~1e-7 input changes)"
    )
    for name, delta in step_deltas(theirs, ours, zsad_module(initial)).items():
        print(f"  {name:<32} max |delta| = {delta:.3e}")
        deltas[name] = delta
    deltas["metrics"] = ps.print_delta(
        "metrics (" + ", ".join(METRICS) + ")", theirs["metrics"], ours["metrics"]
    )
    ids = ours["category_ids"]
    same_metrics = metrics_table(
        ids, theirs["image_scores"], theirs["labels"], theirs["maps"], theirs["masks"]
    )
    ps.print_delta("  zsad's metrics on their maps", theirs["metrics"], same_metrics)
    aupro = ps.evaluator_metrics(
        ps.CATEGORIES, ids, theirs["image_scores"], theirs["labels"], theirs["maps"], theirs["masks"]
    )
    names = ours["aupro_names"].tolist()
    deltas["aupro"] = ps.print_delta(
        "AUPROs (zsad's, on their maps)", [aupro[k] for k in names], ours["aupro"]
    )
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(state_dict(), root, ours["paths"], theirs["masks"]),
            aupro_names=np.array(names),
            aupro=np.array([aupro[k] for k in names]),
            **{k: v for k, v in theirs.items() if k.startswith("initial.")},
            **sampled(theirs),
        )
    print(ps.json_line("adaclip", deltas))


if __name__ == "__main__":
    main()
