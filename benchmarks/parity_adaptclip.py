"""AdaptCLIP parity: the authors' train() and test() and zsad on the same tiny random-weight CLIP and files.

    python benchmarks/parity_adaptclip.py --official /tmp/AdaptCLIP --official-env /tmp/adaptclip-env [--write-fixture]

``--official`` is a checkout of gaobb/AdaptCLIP; ``--official-env`` holds what their modules import beyond
zsad's environment (``pip install --target /tmp/adaptclip-env einops==0.7.0 tabulate==0.9.0``, their
requirements.txt versions, and ``pip install --target /tmp/adaptclip-env --no-deps kornia==0.6.3`` for their
metrics' connected components). Nothing is fetched.

The official side (a subprocess) runs their ``train.train(args)`` for one epoch of one batch (all twelve test
images of the parity set, one prompt image each, as their Dataset gives whatever ``--k_shots``) and their ``test.test(args)``
at ``--k_shots 0``, ``1``, ``2`` and ``4`` on the checkpoint it saved, with the arguments of their scripts
(``--features_list 6 12 18 24 --n_ctx 12 --vl_reduction 4 --pq_context``, three adapters, seed 10, sigma 4,
``average_mean`` fusion), in float32 on the CPU. It records the adapters as built (their initialisation
after ``setup_seed(10)``), every gradient of the Adam step, the saved ``epoch_1.pth`` and, per test run, the
maps and image scores their loop hands its evaluator. zsad then loads the initial adapters through its
reader of their checkpoint format, takes the same step (loss, gradients, parameters and BatchNorm
statistics after Adam) and evaluates their trained checkpoint zero-shot and at 1, 2 and 4 shots.

Their own ``dataset`` package (``Dataset``, ``PromptDataset``; meta.json written by their
``dataset/mvtec.py`` solver) and ``tools`` (``get_transform``, ``setup_seed``, ``Evaluator``: anomalib's
metrics) run as they are. Shims on the official side, none changing a number:

- the solver's class list is the generated categories; Pillow >= 11's refusal of their float64 all-zero
  mask is undone as in parity_anomalyclip.py;
- ``input_dim = 768`` (ViT-L-14-336's, written out in train.py and test.py) is replaced by the parity model's
  output width in their source before it is loaded, and ``--pq_mid_dim 32`` keeps the fixture small (both
  sides; 128 is the default);
- ``adaptcliplib.load`` builds their ``AdaptCLIP`` with their ``build_model`` from the parity weights (its own
  path reads OpenAI's archive); ``Tensor.cuda`` is the identity (``label.long().cuda()``, the static texts'
  ``.cuda()``); ``pkg_resources`` (only ``packaging`` used) is stubbed;
- their data loaders run in the main process (``num_workers=0``; the same items) and ``Evaluator.run`` /
  ``Adam.step`` are wrapped to record what they receive.

The parity images have 4 normal training images per category. Their draws (the training prompt of each
item: ``random.choice(meta["train"][cls])``; the K references: ``torch.randint`` after ``manual_seed(10)``,
with replacement) are recorded and zsad reads and encodes the same files (its own draws come from other
streams: docs/methods.md#adaptclip), so every number below is computed on the same images.

The parity CLIP has 24 vision blocks (their DPAM_layer=20 and the layers 6/12/18/24 are written out too;
64 wide, one head, 14 px patches), output width 32 and a 4-block text tower, built at 112 px and run at
154 px (11 x 11 patches: the position embedding is interpolated as at 518 px).
"""

from __future__ import annotations

import os
import random
import re
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "adaptclip.npz"
MODEL = "zsad-parity-adaptclip"
EMBED_DIM = 32
MODEL_CONFIG = {
    "embed_dim": EMBED_DIM,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 112, "layers": 24, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 4},
}
IMAGE_SIZE = 154
SEED = 10
PQ_MID_DIM = 32
SHOTS = (0, 1, 2, 4)  # their test script's --k_shots
REPORTED = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")

ps.PARITY_MODELS[MODEL] = MODEL_CONFIG


def state_dict(seed: int = ps.WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    return ps.parity_state_dict(seed, MODEL)


def zsad_config(**overrides):
    from lightning_modules.adaptclip import AdaptCLIPConfig
    from lightning_modules.clip.config import BackboneConfig

    backbone = BackboneConfig(name=MODEL, pretrained=None, image_size=IMAGE_SIZE)
    return AdaptCLIPConfig(backbone=backbone, pq_mid_dim=PQ_MID_DIM, cache_features=False, **overrides)


def zsad_module(cfg=None, weights: dict[str, torch.Tensor] | None = None):
    """zsad's module on the parity CLIP (``weights``: its state dict, default :func:`state_dict`)."""
    from lightning_modules.adaptclip import AdaptCLIP, AdaptCLIPModule

    cfg = cfg or zsad_config()
    clip, tokenizer = ps.parity_clip(state_dict() if weights is None else weights, MODEL)
    return AdaptCLIPModule(cfg, model=AdaptCLIP(cfg, clip, tokenizer))


def checkpoint_of(outputs: dict[str, np.ndarray], prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{"textual_learner": ..., "visual_learner": ..., "pq_learner": ...}`` stored under ``prefix``."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in outputs.items():
        if key.startswith(prefix):
            part, name = key[len(prefix) :].split(".", 1)
            parts.setdefault(part, {})[name] = torch.from_numpy(np.array(value))
    return parts


def zsad_names(module, official: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Their entries (partial sets allowed: gradients) under zsad's names."""
    from lightning_modules.adaptclip.official_checkpoint import pq_state, textual_state, visual_state

    return (
        textual_state(module, official.get("textual_learner", {}), "parity")
        | visual_state(official.get("visual_learner", {}), "parity")
        | pq_state(module, official.get("pq_learner", {}), "parity")
    )


def zsad_outputs(
    root: Path, initial, trained, drawn: dict[str, np.ndarray], cfg=None
) -> dict[str, np.ndarray]:
    """zsad on the files under ``root``: one training step from their ``initial`` adapters, then zero-shot and
    k-shot inference with their ``trained`` checkpoint. ``drawn``: the files their code drew (``train_prompt``
    per query path, ``references_{k}shot`` per category in order): zsad reads and encodes those."""
    from datamodules import AnomalyDataModule, DataConfig
    from datamodules.references import ReferenceDraw
    from lightning_modules.adaptclip.official_checkpoint import zsad_state_dict
    from lightning_modules.adaptclip.training_prompts import TrainingPrompts
    from lightning_modules.registry import get_method

    module = zsad_module(cfg)
    model = module.model
    module.load_state_dict(zsad_state_dict(module, initial, "parity initial"), strict=False)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        get_method("adaptclip").preprocessing(module.cfg, "synthetic"),
        seed=SEED,
    )
    batch = next(iter(data.test_dataloader()))
    images, masks, labels, ids = batch["image"], batch["mask"], batch["label"], batch["category_id"]
    size = tuple(masks.shape[-2:])

    # one training step (train.py)
    module.train()
    prompts = TrainingPrompts(data, module.cfg.train_prompts, module.cfg.train_prompt_images)
    # their Python random.choice per item is not zsad's stream: the same pool, their picks read here
    chosen = dict(
        zip(drawn["train_prompt_queries"].tolist(), drawn["train_prompt_files"].tolist(), strict=True)
    )
    query_of = {
        int(i): str(Path(p).relative_to(root))
        for i, p in zip(batch["sample_id"], batch["image_path"], strict=True)
    }
    prompts.paths = lambda epoch, sample, category: [root / chosen[query_of[int(sample)]]]
    prompt_images = prompts.images(0, batch["sample_id"], ids)
    b, s = prompt_images.shape[:2]
    prompt_tokens = [
        t.reshape(b, s, *t.shape[1:]) for t in model.encode_images(prompt_images.flatten(0, 1)).tokens
    ]
    output = model.scores(model.encode_images(images), size, prompt_tokens)
    losses = model.loss(output, labels, masks)
    losses["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.configure_optimizers().step()
    stepped = {
        k: v.detach().clone() for k, v in module.state_dict().items() if k in module.trainable_state_keys()
    }

    # test.py with their trained checkpoint
    module.load_state_dict(zsad_state_dict(module, trained, "parity trained"), strict=False)
    module.eval()
    result = {
        "paths": np.array([str(Path(p).relative_to(root)) for p in batch["image_path"]]),
        "categories": np.array(list(data.categories)),
        "category_ids": ids.numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": (masks > 0.5).float().numpy(),
        "static_text": model.static_text.numpy(),
        "loss": losses["loss"].detach().numpy(),
    }
    result |= {f"grad/{k}": v.numpy() for k, v in grads.items()}
    result |= {f"stepped/{k}": v.numpy() for k, v in stepped.items()}
    for shots in SHOTS:
        model.clear_references()
        if shots:
            paths = {c: [] for c in data.categories}
            for file in np.asarray(drawn[f"references_{shots}shot"]).tolist():
                paths[Path(file).parts[0]].append(root / file)  # in their order (duplicates kept)
            assert all(len(p) == shots for p in paths.values()), paths
            references = data.reference_images(ReferenceDraw(0, (SEED, 0), paths, root, {}))
            for category_id, category in enumerate(data.categories):
                model.set_references(category_id, references.images(category))
        scores, maps = model.predict(images, ids, size)
        result[f"scores_{shots}shot"] = scores.numpy()
        result[f"maps_{shots}shot"] = maps.numpy()
        metrics = ps.evaluator_metrics(result["categories"], ids, scores, labels, maps, masks > 0.5)
        result[f"metric_names_{shots}shot"] = np.array(sorted(metrics))
        result[f"metrics_{shots}shot"] = np.array([metrics[k] for k in sorted(metrics)])
    return result


# --- the official side ---------------------------------------------------------------------------------
METRIC_NAMES = {"I-AUROC": "image_auroc", "I-AP": "image_ap", "P-AUROC": "pixel_auroc", "P-AP": "pixel_ap"}
THEIR_METRICS = ["I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "P-AUPRO"]  # test.py's default


def _official_shims() -> None:
    import packaging.version

    sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU: label.long().cuda(), tokens.cuda()


def _load_script(official: Path, name: str) -> types.ModuleType:
    """Their train.py / test.py with ViT-L's written-out output width replaced by the parity model's."""
    source = (official / f"{name}.py").read_text()
    assert source.count("input_dim = 768") >= 1, name
    module = types.ModuleType(f"adaptclip_{name}")
    module.__file__ = str(official / f"{name}.py")
    exec(
        compile(source.replace("input_dim = 768", f"input_dim = {EMBED_DIM}"), module.__file__, "exec"),
        module.__dict__,
    )
    return module


def _script_torch(**optimizers) -> types.SimpleNamespace:
    """``torch`` for their scripts: data loaders in the main process (their ``num_workers=4`` would need the
    shim datasets picklable; the items are the same) and, for train.py, the recording optimizer."""

    def loader(*args, **kwargs):
        return torch.utils.data.DataLoader(*args, **{**kwargs, "num_workers": 0})

    data = types.SimpleNamespace(**{**vars(torch.utils.data), "DataLoader": loader})
    utils = types.SimpleNamespace(**{**vars(torch.utils), "data": data})
    optim = types.SimpleNamespace(**{**vars(torch.optim), **optimizers})
    return types.SimpleNamespace(**{**vars(torch), "utils": utils, "optim": optim})


def official_args(root: Path, work: Path, train_batch: int, shots: int = 0):
    """``(train args, test args)`` as their scripts pass them, at the parity size."""
    common = dict(
        features_list=[6, 12, 18, 24],
        image_size=IMAGE_SIZE,
        n_ctx=12,
        seed=SEED,
        visual_learner=True,
        textual_learner=True,
        pq_learner=True,
        vl_reduction=4,
        pq_mid_dim=PQ_MID_DIM,
        pq_context=True,
        pretrained_model="ViT-L/14@336px",
        dataset="mvtec",
    )
    train_args = types.SimpleNamespace(
        train_data_path=str(root), save_path=str(work), epoch=1, learning_rate=0.001, batch_size=train_batch,
        print_freq=1, save_freq=1, k_shots=1, **common,
    )  # fmt: skip
    test_args = types.SimpleNamespace(
        test_data_path=str(root), save_path=str(work), checkpoint_path=str(work / "epoch_1.pth"), batch_size=8,
        sigma=4, k_shots=shots, eval_metrics=THEIR_METRICS, fusion_type="average_mean", class_name=None, **common,
    )  # fmt: skip
    return train_args, test_args


def official_side(official: Path, root: Path, weights: Path) -> types.SimpleNamespace:
    """Their train.py and test.py loaded with the shims (module docstring); ``built`` / ``initial`` / ``grads``
    fill as train() runs, ``recorded["results"]`` as test() runs."""
    sys.path.insert(0, str(official))  # before benchmarks/ (which has its own metrics.py)
    _official_shims()
    import adaptcliplib
    import dataset.dataset
    import tools
    from adaptcliplib.build_model import build_model
    from dataset.mvtec import MVTecSolver

    for module in (adaptcliplib, dataset, tools, sys.modules["metrics"]):
        assert Path(module.__file__).is_relative_to(official), module.__file__
    # meta.json of the parity files by their solver (class list: the generated categories)
    solver = MVTecSolver(root=str(root))
    solver.CLSNAMES = list(ps.CATEGORIES)
    solver.run()
    dataset.dataset.Image.fromarray = ps.old_pillow_fromarray(dataset.dataset.Image.fromarray)
    recorded: dict = {}
    evaluate = tools.Evaluator.run

    def recording_run(self, results, cls_name, logger=None):
        recorded["results"] = results
        value = evaluate(self, results, cls_name, logger)
        recorded.setdefault("metrics", {})[cls_name] = value
        return value

    tools.Evaluator.run = recording_run
    # the files their loaders draw: the training prompt of each item (random.choice) and the references
    their_getitem, their_prompts_init = (
        dataset.dataset.Dataset.__getitem__,
        dataset.dataset.PromptDataset.__init__,
    )

    def getitem(self, index):
        recorded["item"] = self.data_all[index]["img_path"]
        return their_getitem(self, index)

    def choice(pool):
        picked = random.choice(pool)
        recorded.setdefault("train_prompts", {})[recorded["item"]] = picked["img_path"]
        return picked

    def prompts_init(self, *args, **kwargs):
        their_prompts_init(self, *args, **kwargs)
        recorded[f"references_{self.k_shots}shot"] = [d["img_path"] for d in self.prompt_data_all]

    dataset.dataset.Dataset.__getitem__ = getitem
    dataset.dataset.random = types.SimpleNamespace(choice=choice)
    dataset.dataset.PromptDataset.__init__ = prompts_init
    adaptcliplib.load = lambda name, device="cpu", **kwargs: (
        build_model(name, torch.load(weights, weights_only=True)).to(device).float(),
        None,
    )
    train_script, test_script = _load_script(official, "train"), _load_script(official, "test")

    built, initial = {}, {}

    def recording(cls, key):
        class Recording(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                built[key] = self
                initial[key] = {k: v.detach().clone() for k, v in self.state_dict().items()}

        return Recording

    for cls, key in (
        ("TextualAdapter", "textual_learner"),
        ("VisualAdapter", "visual_learner"),
        ("PQAdapter", "pq_learner"),
    ):
        setattr(train_script, cls, recording(getattr(train_script, cls), key))
    grads: dict[int, torch.Tensor] = {}

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            for group in self.param_groups:
                grads.update({id(p): p.grad.detach().clone() for p in group["params"] if p.grad is not None})
            return super().step(closure)

    train_script.torch = _script_torch(Adam=RecordingAdam)
    test_script.torch = _script_torch()
    return types.SimpleNamespace(
        train=train_script,
        test=test_script,
        recorded=recorded,
        built=built,
        initial=initial,
        grads=grads,
        data=dataset.dataset.Dataset(
            str(root), *tools.get_transform(IMAGE_SIZE), "mvtec", 0, "", "test", SEED
        ),
    )


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    side = official_side(official, root, weights)
    train_script, test_script, built, initial, grads = (
        side.train,
        side.test,
        side.built,
        side.initial,
        side.grads,
    )
    recorded = side.recorded
    work = Path(tempfile.mkdtemp(prefix="adaptclip-official-"))
    train_args, _ = official_args(root, work, len(side.data))
    train_script.setup_seed(SEED)
    train_script.train(train_args)
    trained = torch.load(work / "epoch_1.pth", weights_only=True)
    result: dict[str, np.ndarray] = {}
    for key, module in built.items():
        result |= {f"initial/{key}.{k}": v.numpy() for k, v in initial[key].items()}
        result |= {f"trained/{key}.{k}": v.numpy() for k, v in trained[key].items()}
        result |= {
            f"grad/{key}.{n}": grads[id(p)].numpy() for n, p in module.named_parameters() if id(p) in grads
        }
    result["static_text"] = built["textual_learner"].static_text_features.numpy()
    queries = sorted(recorded["train_prompts"])
    result["train_prompt_queries"] = np.array(queries)
    result["train_prompt_files"] = np.array([recorded["train_prompts"][q] for q in queries])

    # the inputs as their loader gives them
    items = [side.data[i] for i in range(len(side.data))]
    result["paths"] = np.array([str(Path(it["img_path"]).relative_to(root)) for it in items])
    result["images"] = torch.stack([it["img"] for it in items]).numpy()
    masks = torch.stack([it["img_mask"][0] for it in items])
    result["masks"] = (masks > 0.5).float().numpy()
    result["labels"] = np.array([it["anomaly"] for it in items])
    result["cls"] = np.array([it["cls_name"] for it in items])

    for shots in SHOTS:
        _, test_args = official_args(root, work, len(side.data), shots)
        recorded["metrics"] = {}
        test_script.setup_seed(SEED)
        test_script.test(test_args)
        names = sorted(f"{c}/{METRIC_NAMES.get(m, m)}" for c in recorded["metrics"] for m in THEIR_METRICS)
        values = {
            f"{c}/{METRIC_NAMES.get(m, m)}": v
            for c, row in recorded["metrics"].items()
            for m, v in row.items()
        }
        if shots:
            result[f"references_{shots}shot"] = np.array(recorded[f"references_{shots}shot"])
        result[f"their_metric_names_{shots}shot"] = np.array(names)
        result[f"their_metrics_{shots}shot"] = np.array([values[n] for n in names])
        results = recorded["results"]
        paths = [str(Path(p).relative_to(root)) for p in results["query_paths"]]
        assert paths == result["paths"].tolist(), "their test loader read another order"
        result[f"scores_{shots}shot"] = results["pr_anomalys"].float().numpy()
        result[f"maps_{shots}shot"] = results["pr_masks"].float().numpy()
    return result


# --- comparison --------------------------------------------------------------------------------------
def sampled(theirs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps: their initial and trained adapters, static texts, scores, every 7th row and
    column of the maps, every 5th image row/column and the paths, labels and masks' sums."""
    # their PQ heads are one module repeated per layer: the first copy suffices (the reader maps it alone)
    repeated = re.compile(r".*pq_learner\.(local|global)_adapter\.[1-9]\d*\..*")
    kept = {
        k: v
        for k, v in theirs.items()
        if k.startswith(("initial/", "trained/")) and not repeated.fullmatch(k)
    }
    kept |= {
        k: theirs[k] for k in ("static_text", "labels", "cls", "train_prompt_queries", "train_prompt_files")
    }
    kept |= {f"references_{s}shot": theirs[f"references_{s}shot"] for s in SHOTS if s}
    for shots in SHOTS:
        kept[f"scores_{shots}shot"] = theirs[f"scores_{shots}shot"]
        kept[f"maps_{shots}shot_sampled"] = theirs[f"maps_{shots}shot"][:, ::7, ::7]
        kept[f"metric_names_{shots}shot"] = theirs[f"metric_names_{shots}shot"]
        kept[f"metrics_{shots}shot"] = theirs[f"metrics_{shots}shot"]
        kept[f"their_metric_names_{shots}shot"] = theirs[f"their_metric_names_{shots}shot"]
        kept[f"their_metrics_{shots}shot"] = theirs[f"their_metrics_{shots}shot"]
    kept["images_sampled"] = theirs["images"][:, :, ::5, ::5]
    return kept


def official_metrics(theirs: dict[str, np.ndarray], shots: int) -> dict[str, float]:
    """zsad's evaluator on their maps and scores (their Evaluator module is not public)."""
    ids = np.array([list(ps.CATEGORIES).index(c) for c in theirs["cls"]])
    metrics = ps.evaluator_metrics(
        ps.CATEGORIES,
        ids,
        theirs[f"scores_{shots}shot"],
        theirs["labels"],
        theirs[f"maps_{shots}shot"],
        theirs["masks"],
    )
    return {k: v for k, v in metrics.items() if k.split("/")[1] in REPORTED}


def deltas(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> dict[str, float]:
    """Print and return max |delta| per quantity (their arrays already in zsad's image order)."""
    out = {}
    for name in (
        "images",
        "masks",
        "static_text",
        *(f"{k}_{s}shot" for s in SHOTS for k in ("maps", "scores")),
    ):
        out[name] = ps.print_delta(name, theirs[name], ours[name])
    return out | {
        "grads": compare_named(theirs, ours, "grad/"),
        "after_step": compare_named(theirs, ours, "stepped/"),
    }


def compare_named(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray], kind: str) -> float:
    """Gradients (``grad/``) or the state after Adam (``stepped/``, theirs: the saved epoch_1.pth)."""
    module = zsad_module()
    prefix = "grad/" if kind == "grad/" else "trained/"
    official = zsad_names(module, checkpoint_of(theirs, prefix))
    mine = {k.removeprefix(kind): v for k, v in ours.items() if k.startswith(kind)}
    assert set(official) == set(mine), sorted(set(official) ^ set(mine))[:5]
    worst, relative = 0.0, 0.0
    for key, tensor in official.items():
        theirs_, mine_ = tensor.numpy().astype(np.float64), np.asarray(mine[key], dtype=np.float64)
        delta = float(np.abs(theirs_ - mine_).max())
        worst, relative = max(worst, delta), max(relative, delta / max(float(np.abs(theirs_).max()), 1e-12))
        if os.environ.get("ADAPTCLIP_PARITY_VERBOSE"):
            print(f"    {key}: {delta:.3g} of {float(np.abs(theirs_).max()):.3g}")
    what = "gradients" if kind == "grad/" else "state after the Adam step"
    print(
        f"  {what}: max |delta| {worst:.3g}, relative to each tensor's largest {relative:.3g} ({len(official)} tensors)"
    )
    return worst


def main() -> None:
    args = ps.parity_arguments(__doc__, "checkout of gaobb/AdaptCLIP", "PYTHONPATH entries for their imports")
    if ps.serve_official_side(args, official_outputs):
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-parity-adaptclip-"))
    root = ps.few_shot_layout(work)  # 4 normal training images per category: their draws choose among them
    env = tuple(p for p in args.official_env.split(":") if p)
    theirs = ps.run_official_side(__file__, args.official, root, state_dict(), work, env)
    ours = zsad_outputs(root, checkpoint_of(theirs, "initial/"), checkpoint_of(theirs, "trained/"), theirs)
    print(f"AdaptCLIP: official ({args.official}) vs zsad, {len(ours['paths'])} images, one training step")
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]
    for name in (
        "paths",
        "cls",
        "labels",
        "images",
        "masks",
        *(f"{k}_{s}shot" for s in SHOTS for k in ("maps", "scores")),
    ):
        theirs[name] = theirs[name][order]
    result = deltas(theirs, ours)
    for shots in SHOTS:
        theirs[f"metric_names_{shots}shot"], theirs[f"metrics_{shots}shot"] = (
            np.array(sorted(m := official_metrics(theirs, shots))),
            np.array([m[k] for k in sorted(m)]),
        )
        mine = dict(
            zip(
                ours[f"metric_names_{shots}shot"].tolist(), ours[f"metrics_{shots}shot"].tolist(), strict=True
            )
        )
        keys = sorted(m)
        result[f"metrics_{shots}shot"] = ps.print_delta(
            f"metrics {shots}-shot", [m[k] for k in keys], [mine[k] for k in keys]
        )
        # their Evaluator (anomalib's torchmetrics AUROC and AUPR) against zsad's on zsad's maps: the AUROCs
        # agree; their "AP" is anomalib's AUPR (trapezoidal area under the PR curve), not average precision
        theirs_own = dict(
            zip(
                theirs[f"their_metric_names_{shots}shot"].tolist(),
                theirs[f"their_metrics_{shots}shot"].tolist(),
                strict=True,
            )
        )
        shared = sorted(k for k in theirs_own if k.split("/")[1] in ("image_auroc", "pixel_auroc"))
        if os.environ.get("ADAPTCLIP_PARITY_VERBOSE"):
            print({k: (theirs_own[k], mine[k]) for k in shared})
        result[f"their_evaluator_{shots}shot"] = ps.print_delta(
            f"their Evaluator {shots}-shot", [theirs_own[k] for k in shared], [mine[k] for k in shared]
        )
    print(ps.json_line("adaptclip", result))
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(state_dict(), root, ours["paths"], theirs["masks"]),
            **sampled(theirs),
        )


if __name__ == "__main__":
    main()
