"""FAPrompt parity: the authors' train.py and test.py and zsad on the same tiny random-weight CLIP and files.

    python benchmarks/parity_faprompt.py --official /tmp/FAPrompt --anomalyclip /tmp/AnomalyCLIP \\
        --official-env /tmp/faprompt-env [--write-fixture]

``--official`` is a checkout of mala-lab/FAPrompt (it leads the official side's ``sys.path``), ``--anomalyclip``
one of zqhang/AnomalyCLIP, whose ``generate_dataset_json/mvtec.py`` writes the ``meta.json`` their Dataset
reads (FAPrompt's README: "same as AnomalyCLIP"; class list set to the generated categories), and
``--official-env`` the PYTHONPATH entry with what their imports need beyond zsad's environment
(docs/methods.md#faprompt). Nothing is fetched.

The official side (a subprocess) runs **their ``train.train(args)``** for one epoch of one batch (all 12
images, ``--batch_size 12 --epoch 1``, otherwise train.sh's arguments at 154 px) and then **their
``test.test(args)``** (test.sh's arguments: ``--metrics image-pixel-level``, ``--sigma`` default 10) on the
``epoch_1.pth`` that train.py saved, then their ``metrics.py`` per class. ``AnomalyCLIP_lib.load`` returns
their ``build_model`` of the parity weights (what it does with a state dict; it would download OpenAI's
archive). What they compute is read, not recomputed: recording wrappers around their Dataset, ``encode_image``,
``encode_text_learn``, ``FAPrompt.forward``, ``compute_similarity*`` and ``get_similarity_map``, and the
locals of ``train`` and ``test`` (``sys.settrace``): the losses, the gradients and weights of the prompt
learner, the per-class results. The learner's initial state is kept and loaded into zsad, and zsad reads the
file train.py wrote with its official-checkpoint reader.

Shims, none in a computed path: ``FAPrompt.py`` (meta-net) and ``train.py`` (the prior's zero target) write
ViT-L-14's width 768 as a literal, replaced by the parity CLIP's 64; their class list is replaced by the
generated categories; Pillow >= 11's refusal of a float64 mask is undone as in parity_vand.py.

zsad: its datamodule with FAPrompt's preprocessing, ``FAPrompt`` (on ``AnomalyCLIPBase``, shared with
AnomalyCLIP: DPAM features, deep tokens, the text tower, the map loss terms), one training step in their
batch order, Adam, batched inference, its metrics. The parity CLIP is AnomalyCLIP's (parity_anomalyclip.py)
with 24 vision blocks (their ``DPAM_layer=20`` and ``--features_list 6 12 18 24`` need them), 9 text blocks
(``--depth 9``) and a 64-wide embedding (their prior reshapes D-wide patches with the text width).
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_anomalyclip as pa  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "faprompt.npz"
MODEL = "zsad-parity-faprompt"
EMBED_DIM = 64
MODEL_CONFIG = {
    **pa.MODEL_CONFIG,
    "embed_dim": EMBED_DIM,
    "vision_cfg": {**pa.MODEL_CONFIG["vision_cfg"], "layers": 24},
    "text_cfg": {**pa.MODEL_CONFIG["text_cfg"], "layers": 9},
}
ps.PARITY_MODELS[MODEL] = MODEL_CONFIG
IMAGE_SIZE = pa.IMAGE_SIZE  # 154 px: 11 x 11 patches, the 8 x 8 position embedding interpolated
SEED = 111  # train.py's and test.py's --seed default
SIGMA = 10  # test.py's --sigma default
# their argparse defaults / train.sh and test.sh, except the batch (all images: one step), the epochs and the size
COMMON_ARGS = dict(
    dataset="mvtecad",
    depth=9,
    n_ctx=12,
    t_n_ctx=4,
    feature_map_layer=[0, 1, 2, 3],
    features_list=[6, 12, 18, 24],
    image_size=IMAGE_SIZE,
    seed=SEED,
)
# the prompt learner's entries, in their named_parameters() order
LEARNABLE = (
    "patch_meta_net.linear1.weight",
    "patch_meta_net.linear1.bias",
    "patch_meta_net.linear2.weight",
    "patch_meta_net.linear2.bias",
    *(f"compound_prompts_text.{j}" for j in range(8)),
    "ctx_pos",
    "ctx_neg",
)
LOSSES = ("map_loss", "image_loss", "score_loss", "decorrelation_loss", "prior_loss", "loss")
# quantities compared per image; grouped by where zsad computes them
SHARED = ("images", "masks", "image_embedding", "patches", "static_texts")  # AnomalyCLIPBase
OWN = ("prior_patches", "prior", "image_texts", "static_maps", "prior_maps", "static_max", "prior_max")
FINAL = ("image_scores", "maps")


def state_dict(seed: int = ps.WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    return ps.parity_state_dict(seed, MODEL)


def zsad_config(**overrides):
    from lightning_modules.clip.config import BackboneConfig
    from lightning_modules.faprompt import FAPromptConfig

    cfg = FAPromptConfig(
        backbone=BackboneConfig(name=MODEL, pretrained=None, image_size=IMAGE_SIZE),
        gaussian_sigma=float(SIGMA),
        cache_features=False,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def zsad_module(cfg=None):
    import open_clip

    from lightning_modules.faprompt import FAPrompt, FAPromptModule

    ps.register_parity_model(MODEL)
    clip = open_clip.create_model(MODEL, pretrained=None)
    clip.load_state_dict(state_dict())
    cfg = cfg or zsad_config()
    return FAPromptModule(cfg, model=FAPrompt(cfg, clip, open_clip.get_tokenizer(MODEL)))


def official_name(zsad_name: str) -> str:
    """The authors' prompt-learner entry of a zsad parameter (``model.prompts.X``)."""
    name = zsad_name.removeprefix("model.prompts.")
    if name.startswith("meta_net."):
        return "patch_" + name
    if name.startswith("deep_tokens."):
        return "compound_prompts_text." + name.split(".")[1]
    return {"normal_context": "ctx_pos", "abnormal_context": "ctx_neg"}[name]


def as_official(tensor: torch.Tensor, official_shape: tuple[int, ...]) -> np.ndarray:
    """A copy (parameters change in place later) in the authors' shape."""
    return tensor.detach().reshape(official_shape).clone().numpy()


def write_learner(path: Path, learner: dict[str, np.ndarray], seed: int = 0) -> Path:
    """A file as their train.py writes it (``{"prompt_learner": state_dict}``) from the fixture's entries
    plus their unused ``compound_prompt_projections`` (``Linear(width, 896)``, random here)."""
    g = torch.Generator().manual_seed(seed)
    width = MODEL_CONFIG["text_cfg"]["width"]
    state = {k: torch.from_numpy(np.array(v)) for k, v in learner.items()}
    for j in range(8):
        state[f"compound_prompt_projections.{j}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{j}.bias"] = torch.randn(896, generator=g)
    torch.save({"prompt_learner": state}, path)
    return path


def train_step_outputs(module, features, labels, masks, initial, order) -> dict[str, np.ndarray]:
    """train.py's step on the batch in their (shuffled) ``order``, from their initial learner: the losses,
    the gradients and the weights after Adam's step, in their names and shapes."""
    from lightning_modules.anomalyclip.model import ImageFeatures

    model = module.model
    (layer,) = model.cfg.map_layers
    step_features = ImageFeatures(
        features.image_embedding[order], {layer: features.patch_embeddings[layer][order]}, features.grid
    )
    losses = model.loss(model.scores(step_features, tuple(masks.shape[-2:])), labels[order], masks[order])
    losses["loss"].backward()
    shapes = {k: v.shape for k, v in initial.items()}
    named = {official_name(n): p for n, p in module.named_parameters() if p.requires_grad}
    grads = {f"grad.{k}": as_official(named[k].grad, shapes[k]) for k in LEARNABLE}
    optimizer = module.configure_optimizers()
    optimizer.step()
    stepped = {f"stepped.{k}": as_official(named[k], shapes[k]) for k in LEARNABLE}
    return {k: v.detach().numpy() for k, v in losses.items()} | grads | stepped


def zsad_outputs(
    root: Path,
    initial: dict[str, np.ndarray],
    trained_file: Path,
    train_paths: list[str],
    cfg=None,
    train_step: bool = True,
) -> dict[str, np.ndarray]:
    """zsad on the files under ``root``: one training step from the authors' initial learner on the batch
    in their order (``train_step``), then evaluation with the learner their train.py saved
    (``trained_file``)."""
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.faprompt.official_checkpoint import zsad_state_dict
    from lightning_modules.registry import get_method

    module = zsad_module(cfg)
    model = module.model
    learner = {k: torch.from_numpy(np.array(v)) for k, v in initial.items()}
    module.load_state_dict(zsad_state_dict(module, {"prompt_learner": learner}, "parity"), strict=False)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        get_method("faprompt").preprocessing(module.cfg, "synthetic"),
    )
    batch = next(iter(data.test_dataloader()))
    paths = [str(Path(p).relative_to(root)) for p in batch["image_path"]]
    images, masks, labels = batch["image"], batch["mask"], batch["label"]
    size = tuple(masks.shape[-2:])
    features = model.encode_images(images)
    (layer,) = model.cfg.map_layers

    order = [paths.index(p) for p in train_paths]
    step = train_step_outputs(module, features, labels, masks, initial, order) if train_step else {}

    # test.py with the learner their train.py saved
    module.load_trained_weights(str(trained_file), get_method("faprompt").official_checkpoint)
    with torch.no_grad():
        output = model.scores(features, size, texts="inference")
        static = model._static_texts()
    scores, maps = model.predict(images, size)
    result = {
        "paths": np.array(paths),
        "categories": np.array(list(data.categories)),
        "category_ids": batch["category_id"].numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": (masks > 0.5).float().numpy(),
        "image_embedding": features.image_embedding.numpy(),
        "patches": features.patch_embeddings[layer].numpy(),
        "static_texts": static.numpy(),
        "prior_patches": output.prior_patches.numpy(),
        "prior": output.prior.numpy(),
        "image_texts": output.image_text.numpy(),
        "static_maps": output.static_probs.numpy(),
        "prior_maps": output.prior_probs.numpy(),
        "static_max": output.static_max.numpy(),
        "prior_max": output.prior_max.numpy(),
        "image_scores": scores.numpy(),
        "maps": maps.numpy(),
        **step,
    }
    metrics = ps.evaluator_metrics(
        result["categories"], result["category_ids"], scores, labels, maps, masks > 0.5
    )
    return result | {
        "metric_names": np.array(sorted(metrics)),
        "metrics": np.array([metrics[k] for k in sorted(metrics)]),
    }


# --- the official side (a subprocess with the checkout first on sys.path) ------------------------------
def shimmed_module(path: Path, name: str, replacements: dict[str, tuple[str, int]]) -> types.ModuleType:
    """``path`` imported as module ``name`` with each ``old`` replaced by ``new`` (``{old: (new, count)}``, the
    count checked, so that a changed checkout fails loudly instead of running unshimmed)."""
    source = path.read_text()
    for old, (new, count) in replacements.items():
        if source.count(old) != count:
            raise SystemExit(
                f"{path}: expected {count} x {old!r}, found {source.count(old)}: update the shim"
            )
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


class Recorder:
    """What the authors' code computes, per call, in the current phase (``train`` or ``test``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: dict[str, dict[str, list[Any]]] = {"train": {}, "test": {}}
        self.phase = "train"
        self.initial: dict[str, torch.Tensor] | None = None

    def add(self, kind: str, value: Any) -> None:
        self.calls[self.phase].setdefault(kind, []).append(value)

    def of(self, phase: str, kind: str) -> list[Any]:
        return self.calls[phase].get(kind, [])

    def patches(self, lib, model_class, learner_class, dataset_class) -> list[tuple[Any, str, Any]]:
        encode_image, encode_text = model_class.encode_image, model_class.encode_text_learn
        forward, init, getitem = learner_class.forward, learner_class.__init__, dataset_class.__getitem__
        similarity_ori, similarity, similarity_map = (
            lib.compute_similarity_ori,
            lib.compute_similarity,
            lib.get_similarity_map,
        )

        def recorded_encode_image(model, image, *args, **kwargs):
            image_features, patch_features = encode_image(model, image, *args, **kwargs)
            self.add("encode_image", (image.clone(), image_features.clone(), patch_features.clone()))
            return image_features, patch_features

        def recorded_encode_text(model, *args, **kwargs):
            features = encode_text(model, *args, **kwargs)
            self.add("text", features.detach().clone())
            return features

        def recorded_init(learner, *args, **kwargs):
            init(learner, *args, **kwargs)
            if self.initial is None:  # train.py's learner, before any step
                self.initial = {k: v.detach().clone() for k, v in learner.state_dict().items()}

        def recorded_forward(learner, selected_tokens=None):
            out = forward(learner, selected_tokens=selected_tokens)
            if selected_tokens is not None:
                self.add("prior", (selected_tokens.detach().clone(), out[-1].detach().clone()))
            return out

        def recorded_getitem(data, index):
            item = getitem(data, index)
            self.add("item", str(Path(item["img_path"]).relative_to(self.root)))
            return item

        def recorded(kind, function):
            def wrapped(*args, **kwargs):
                out = function(*args, **kwargs)
                self.add(kind, (out[0] if isinstance(out, tuple) else out).detach().clone())
                return out

            return wrapped

        return [
            (model_class, "encode_image", recorded_encode_image),
            (model_class, "encode_text_learn", recorded_encode_text),
            (learner_class, "__init__", recorded_init),
            (learner_class, "forward", recorded_forward),
            (dataset_class, "__getitem__", recorded_getitem),
            (lib, "compute_similarity_ori", recorded("similarity", similarity_ori)),
            (lib, "compute_similarity", recorded("similarity", similarity)),
            (lib, "get_similarity_map", recorded("similarity_map", similarity_map)),
        ]


@contextlib.contextmanager
def patched(patches) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for target, name, value in patches:
            stack.enter_context(mock.patch.object(target, name, value))
        yield


@dataclasses.dataclass
class OfficialSide:
    """Their modules, imported from the checkout with the shims, and the patches every run needs."""

    lib: types.ModuleType  # AnomalyCLIP_lib
    model_class: type  # AnomalyCLIP_lib.AnomalyCLIP.AnomalyCLIP
    faprompt: types.ModuleType  # FAPrompt.py (shimmed)
    train: types.ModuleType  # train.py (shimmed)
    test: types.ModuleType
    metrics: types.ModuleType
    dataset_class: type
    patches: list[tuple[Any, str, Any]]  # AnomalyCLIP_lib.load of the parity weights


def official_side(official: Path, weights: Path) -> OfficialSide:
    """Their code from the checkout ``official`` (first on ``sys.path``), with the shims of the module
    docstring, and ``AnomalyCLIP_lib.load`` returning their ``build_model`` of the parity weights."""
    import parity_anovl  # noqa: F401  (it puts benchmarks/ first on sys.path: import it before the checkout)

    sys.path.insert(0, str(official))  # before benchmarks/ (which has its own metrics.py)
    import AnomalyCLIP_lib
    import dataset
    from AnomalyCLIP_lib.AnomalyCLIP import AnomalyCLIP
    from AnomalyCLIP_lib.build_model import build_model

    assert Path(AnomalyCLIP_lib.__file__).is_relative_to(official), AnomalyCLIP_lib.__file__
    width = str(EMBED_DIM)
    meta_net = {
        "nn.Linear(768 * self.k, 768 * self.k // 16)": (
            f"nn.Linear({width} * self.k, {width} * self.k // 16)",
            1,
        ),
        "nn.Linear(768 * self.k // 16, 768)": (f"nn.Linear({width} * self.k // 16, {width})", 1),
    }
    faprompt = shimmed_module(official / "FAPrompt.py", "FAPrompt", meta_net)
    train = shimmed_module(official / "train.py", "train", {"torch.zeros(768)": (f"torch.zeros({width})", 1)})
    import metrics
    import test

    assert Path(metrics.__file__).is_relative_to(official) and Path(test.__file__).is_relative_to(official)
    categories = list(ps.CATEGORIES)
    dataset.generate_class_info = lambda name: (categories, {c: i for i, c in enumerate(categories)})
    dataset.Image.fromarray = ps.old_pillow_fromarray(dataset.Image.fromarray)

    def load(name, device="cpu", design_details=None, jit=False, download_root=None):
        """AnomalyCLIP_lib.load on the CPU for a state dict: ``build_model`` then ``float()``."""
        state = torch.load(weights, weights_only=True)
        return build_model(name, state, design_details).to(device).float(), None

    return OfficialSide(
        AnomalyCLIP_lib,
        AnomalyCLIP,
        faprompt,
        train,
        test,
        metrics,
        dataset.Dataset,
        [(AnomalyCLIP_lib, "load", load)],
    )


def official_args(
    root: Path, work: Path, batch_size: int
) -> tuple[types.SimpleNamespace, types.SimpleNamespace]:
    """train.py's and test.py's arguments (train.sh / test.sh, at the parity size) on ``root``: one epoch at
    ``batch_size``, then test.py on the ``epoch_1.pth`` it saves."""
    train_args = types.SimpleNamespace(
        train_data_path=str(root),
        save_path=str(work / "checkpoints"),
        epoch=1,
        learning_rate=0.001,
        batch_size=batch_size,
        print_freq=1,
        save_freq=1,
        **COMMON_ARGS,
    )
    test_args = types.SimpleNamespace(
        data_path=str(root),
        save_path=str(work / "results"),
        checkpoint_path=str(work / "checkpoints" / "epoch_1.pth"),
        metrics="image-pixel-level",
        sigma=SIGMA,
        **COMMON_ARGS,
    )
    return train_args, test_args


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    from parity_anovl import locals_of

    side = official_side(official, weights)
    train, test, metrics = side.train, side.test, side.metrics
    work = weights.parent
    recorder = Recorder(root)
    patches = side.patches + recorder.patches(
        side.lib, side.model_class, side.faprompt.FAPrompt, side.dataset_class
    )
    num_images = sum(len(v) for v in _meta(root)["test"].values())
    train_args, test_args = official_args(root, work, num_images)
    trained_file = Path(test_args.checkpoint_path)
    with patched(patches):
        train.setup_seed(train_args.seed)
        step_names = ("loss", "image_loss", "image_loss2", "loss_ab", "loss_bias", "prompt_learner", "items")
        with locals_of(train.train, step_names) as step:
            train.train(train_args)
        recorder.phase = "test"
        test.setup_seed(test_args.seed)
        with locals_of(test.test, ("results",)) as tested:
            test.test(test_args)
    result = _official_step(recorder, {k: v[-1] for k, v in step.items()}, root)
    result |= _official_test(recorder, tested["results"][0], metrics)
    trained = torch.load(trained_file, weights_only=True)["prompt_learner"]
    return result | {
        "trained_file": np.array(str(trained_file)),
        **{f"trained.{k}": v.numpy() for k, v in trained.items() if "projections" not in k},
    }


def _meta(root: Path) -> dict[str, Any]:
    import json

    return json.loads((root / "meta.json").read_text())


def _official_step(recorder: Recorder, step: dict[str, Any], root: Path) -> dict[str, np.ndarray]:
    """train.py's losses, gradients and weights after Adam's step, and its initial learner."""
    learner = step["prompt_learner"]
    named = dict(learner.named_parameters())
    terms = [step[k] for k in ("loss", "image_loss", "image_loss2", "loss_ab", "loss_bias")]
    # train.py: (loss + image_loss + image_loss2 + 0.1*loss_ab + loss_bias)
    total = terms[0] + terms[1] + terms[2] + 0.1 * terms[3] + terms[4]
    values = dict(zip(LOSSES, (*terms, total), strict=True))
    return {
        "train_paths": np.array([str(Path(p).relative_to(root)) for p in step["items"]["img_path"]]),
        **{k: np.asarray(float(v.detach()), dtype=np.float32) for k, v in values.items()},
        **{f"grad.{k}": named[k].grad.numpy() for k in LEARNABLE},
        **{f"stepped.{k}": named[k].detach().numpy() for k in LEARNABLE},
        **{f"initial.{k}": v.numpy() for k, v in recorder.initial.items() if "projections" not in k},
    }


def _official_test(recorder: Recorder, results: dict[str, Any], metrics) -> dict[str, np.ndarray]:
    """test.py's per-image quantities (loop order) and their metrics per class."""
    paths = recorder.of("test", "item")
    encoded = recorder.of("test", "encode_image")
    texts = recorder.of("test", "text")  # per image: static pos, static neg, own pos, own neg
    priors = recorder.of("test", "prior")
    similarities = recorder.of("test", "similarity")  # per image: static, own
    maps = recorder.of("test", "similarity_map")  # per image: static, own
    n = len(paths)
    assert len(encoded) == len(priors) == n and len(texts) == 4 * n, (len(encoded), len(priors), len(texts))
    rows: dict[str, list[Any]] = {
        k: [] for k in ("images", "image_embedding", "patches", "prior_patches", "prior")
    }
    rows |= {k: [] for k in ("image_texts", "static_maps", "prior_maps", "static_max", "prior_max")}
    for i, (image, image_features, patch_features) in enumerate(encoded):
        rows["images"].append(image[0])
        rows["image_embedding"].append((image_features / image_features.norm(dim=-1, keepdim=True))[0])
        rows["patches"].append((patch_features / patch_features.norm(dim=-1, keepdim=True))[1:, 0])
        rows["prior_patches"].append(priors[i][0])
        rows["prior"].append(priors[i][1][0])
        own = torch.cat([texts[4 * i + 2], texts[4 * i + 3].mean(dim=0, keepdim=True)])
        rows["image_texts"].append(own / own.norm(dim=-1, keepdim=True))
        rows["static_maps"].append(maps[2 * i][0])
        rows["prior_maps"].append(maps[2 * i + 1][0])
        rows["static_max"].append(similarities[2 * i][1:, 0, 1].max())
        rows["prior_max"].append(similarities[2 * i + 1][1:, 0, 1].max())
    result = {k: torch.stack(v).numpy() for k, v in rows.items()}
    result["static_texts"] = torch.cat([texts[0], texts[1]]).numpy()
    result["paths"] = np.array(paths)
    # the per-class results, back in loop order
    classes = [p.split("/")[0] for p in paths]
    taken = {c: 0 for c in results}
    per_image: dict[str, list[Any]] = {"labels": [], "image_scores": [], "maps": [], "masks": []}
    for c in classes:
        j = taken[c]
        taken[c] += 1
        per_image["labels"].append(int(results[c]["gt_sp"][j]))
        per_image["image_scores"].append(float(results[c]["pr_sp"][j]))
        per_image["maps"].append(np.asarray(results[c]["anomaly_maps"][j, 0]))
        per_image["masks"].append(np.asarray(results[c]["imgs_masks"][j, 0]))
    result |= {k: np.array(v) for k, v in per_image.items()}
    result["cls"] = np.array(classes)
    official = {}
    for c in results:
        official[f"{c}/image_auroc"] = metrics.image_level_metrics(results, c, "image-auroc")
        official[f"{c}/image_ap"] = metrics.image_level_metrics(results, c, "image-ap")
        official[f"{c}/pixel_auroc"] = metrics.pixel_level_metrics(results, c, "pixel-auroc")
        official[f"{c}/aupro_cflow"] = metrics.pixel_level_metrics(results, c, "pixel-aupro")
    # their cal_pro_score on the maps and masks as the fixture keeps them (every 7th row and column), for the
    # CI test to run zsad's cflow AUPRO on the same arrays
    for c in results:
        keep = result["cls"] == c
        masks, maps = result["masks"][keep][:, ::7, ::7], result["maps"][keep][:, ::7, ::7]
        result[f"sampled_aupro_cflow.{c}"] = np.asarray(metrics.cal_pro_score(masks, maps))
    result["official_metric_names"] = np.array(sorted(official))
    result["official_metrics"] = np.array([official[k] for k in sorted(official)])
    return result


# --- comparison ----------------------------------------------------------------------------------------
def write_meta_json(anomalyclip: Path, root: Path) -> None:
    """AnomalyCLIP's ``generate_dataset_json/mvtec.py`` solver on ``root`` (class list: the generated ones),
    in its own process."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from mvtec import MVTecSolver; "
        "s = MVTecSolver(root=sys.argv[2]); s.CLSNAMES = sys.argv[3:]; s.run()"
    )
    folder = anomalyclip / "generate_dataset_json"
    subprocess.run([sys.executable, "-c", code, str(folder), str(root), *ps.CATEGORIES], check=True)


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps of the per-image quantities: every 8th patch embedding, every 7th row and
    column of the maps, the rest whole."""
    kept = {k: outputs[k] for k in (*SHARED, *OWN, *FINAL) if k not in ("images", "masks")}
    kept["patches"] = outputs["patches"][:, ::8]
    for name in ("static_maps", "prior_maps"):
        kept[name] = outputs[name][..., ::7, ::7]
    kept["maps"] = outputs["maps"][:, ::7, ::7]
    return kept


def official_metrics(theirs: dict[str, np.ndarray]) -> dict[str, float]:
    """Their metrics.py per class (image AUROC / AP, pixel AUROC, their 200-threshold AUPRO) and zsad's
    evaluator on their maps for what their test.py does not compute (exact AUPRO, pixel AP, F1-max)."""
    ids = np.array([list(ps.CATEGORIES).index(c) for c in theirs["cls"]])
    ours_on_theirs = ps.evaluator_metrics(
        ps.CATEGORIES, ids, theirs["image_scores"], theirs["labels"], theirs["maps"], theirs["masks"]
    )
    official = dict(
        zip(theirs["official_metric_names"].tolist(), theirs["official_metrics"].tolist(), strict=True)
    )
    return ours_on_theirs | official


def compare(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> dict[str, float]:
    """max |delta| per quantity (theirs reordered to zsad's order), printed; the metrics last."""
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]
    deltas = {}
    print("  -- shared with AnomalyCLIP (AnomalyCLIPBase: DPAM features, deep tokens, text tower) --")
    for name in SHARED:
        value = theirs[name] if name == "static_texts" else theirs[name][order]
        deltas[name] = ps.print_delta(name, value, ours[name])
    print("  -- FAPrompt's own (prompts, prior, scoring) --")
    for name in (*OWN, *FINAL):
        deltas[name] = ps.print_delta(name, theirs[name][order], ours[name])
    print("  -- one training step (train.py, their batch order) --")
    for name in LOSSES:
        deltas[name] = ps.print_delta(name, theirs[name], ours[name])
    for kind in ("grad", "stepped"):
        deltas[kind] = max(
            ps.print_delta(f"{kind}.{k}", theirs[f"{kind}.{k}"], ours[f"{kind}.{k}"]) for k in LEARNABLE
        )
    steps = all(steps_agree(theirs, ours, k) for k in LEARNABLE)
    print(
        f"  gradients within tolerance: {grads_agree(theirs, ours)}, Adam steps: {steps} (grads_agree, steps_agree)"
    )
    mine = dict(zip(ours["metric_names"].tolist(), ours["metrics"].tolist(), strict=True))
    official = official_metrics(theirs)
    print(
        "  -- metrics per class: zsad on its maps vs their metrics.py (AUPRO: zsad's evaluator on their maps) --"
    )
    for metric in sorted({k.split("/")[1] for k in official}):
        names = [k for k in sorted(official) if k.endswith("/" + metric)]
        deltas[metric] = ps.print_delta(metric, [official[k] for k in names], [mine[k] for k in names])
        if metric == "aupro_cflow":
            keys = [f"{c}/{metric}" for c in ours["categories"]]  # category id order
            ps.print_cflow_agreement(
                [official[k] for k in keys],
                [mine[k] for k in keys],
                ours["maps"],
                ours["masks"],
                ours["category_ids"],
            )
    from lightning_modules.metrics import legacy_cflow_aupro

    sampled_maps, sampled_masks = theirs["maps"][:, ::7, ::7], theirs["masks"][:, ::7, ::7]
    on_theirs = [
        legacy_cflow_aupro(sampled_maps[theirs["cls"] == c], sampled_masks[theirs["cls"] == c])
        for c in ps.CATEGORIES
    ]
    their_values = [float(theirs[f"sampled_aupro_cflow.{c}"]) for c in ps.CATEGORIES]
    deltas["aupro_cflow_same_maps"] = ps.print_delta(
        "aupro_cflow, the same (sampled) maps", their_values, on_theirs
    )
    return deltas


def grads_agree(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> bool:
    """Each gradient within 1e-5 of its largest magnitude; the deep tokens' also within 8 float16 ulps of
    the official value: their ``.half()`` rounds each prompt copy's gradient on its own (11 prompts x 13
    text passes: 143 copies per block), and a copy whose float32 gradient differs by round-off can round to
    the neighbouring float16 value (at most 4 ulps of the sum measured; without the rounding, up to 481)."""
    for name in LEARNABLE:
        official, mine = theirs[f"grad.{name}"].astype(np.float64), ours[f"grad.{name}"].astype(np.float64)
        tolerance = np.full(official.shape, 1e-5 * max(np.abs(official).max(), 1e-12))
        if name.startswith("compound_prompts_text"):
            ulp = np.spacing(np.abs(official).astype(np.float16)).astype(np.float64)
            tolerance = np.maximum(tolerance, 8 * ulp)
        if not (np.abs(official - mine) <= tolerance).all():
            return False
    return True


def steps_agree(
    theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray], name: str, lr: float = 1e-3
) -> bool:
    """The weights after Adam's first step, ``p - lr g / (|g| + eps)``, within its sensitivity to the two
    sides' gradients: ``|d (g / (|g| + eps))| <= |dg| / (min |g| + eps)``, plus float32 round-off at the
    step's magnitude (``max(|p|, lr)``: a weight near 0 after a step of ``lr`` keeps that step's rounding,
    which differs in the last bits between CPU instruction sets)."""
    eps = 1e-8
    g_official, g_mine = theirs[f"grad.{name}"].astype(np.float64), ours[f"grad.{name}"].astype(np.float64)
    p_official, p_mine = (
        theirs[f"stepped.{name}"].astype(np.float64),
        ours[f"stepped.{name}"].astype(np.float64),
    )
    bound = 4 * np.spacing(np.maximum(np.abs(p_official), lr).astype(np.float32)).astype(np.float64)
    bound += lr * np.abs(g_official - g_mine) / (np.minimum(np.abs(g_official), np.abs(g_mine)) + eps)
    return bool((np.abs(p_official - p_mine) <= bound).all())


def arguments(doc: str):
    """The parity command line plus ``--anomalyclip DIR`` (this script's and speed_faprompt.py's)."""

    def extra(parser) -> None:
        parser.add_argument(
            "--anomalyclip", type=Path, help="checkout of zqhang/AnomalyCLIP (its meta.json solver)"
        )

    return ps.parity_arguments(
        doc, "checkout of mala-lab/FAPrompt", "PYTHONPATH entries for their imports", extra=extra
    )


def prepared_files(args, prefix: str) -> tuple[Path, Path, tuple[str, ...]]:
    """``(work folder, images root with their meta.json, the official side's PYTHONPATH)``."""
    if args.anomalyclip is None:
        raise SystemExit("--anomalyclip DIR (a checkout of zqhang/AnomalyCLIP) is needed for meta.json")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    root = ps.write_parity_images(work / "mvtec")
    write_meta_json(args.anomalyclip.resolve(), root)
    return work, root, tuple(p for p in (str(args.official.resolve()), args.official_env) if p)


def main() -> None:
    args = arguments(__doc__)
    if ps.serve_official_side(args, official_outputs):
        return
    work, root, pythonpath = prepared_files(args, "zsad-parity-faprompt-")
    theirs = ps.run_official_side(__file__, args.official, root, state_dict(), work, pythonpath)
    initial = {k.removeprefix("initial."): v for k, v in theirs.items() if k.startswith("initial.")}
    ours = zsad_outputs(root, initial, Path(str(theirs["trained_file"])), theirs["train_paths"].tolist())
    print(f"FAPrompt: official ({args.official}) vs zsad, {len(ours['paths'])} images, one training step")
    if not np.array_equal(np.sort(theirs["paths"]), np.sort(ours["paths"])):
        raise SystemExit("the two sides read different files")
    for name in LEARNABLE:  # their saved file holds the weights after the step
        assert np.array_equal(theirs[f"stepped.{name}"], theirs[f"trained.{name}"]), name
    deltas = compare(theirs, ours)
    if args.write_fixture:
        order = [list(theirs["paths"]).index(p) for p in ours["paths"]]
        per_image = {k: theirs[k][order] for k in (*SHARED, *OWN, *FINAL, "masks") if k != "static_texts"}
        metrics = official_metrics(theirs)
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(state_dict(), root, ours["paths"], per_image["masks"]),
            **sampled(per_image | {"static_texts": theirs["static_texts"]}),
            masks_sampled=per_image["masks"][:, ::7, ::7].astype(np.uint8),
            **{k: v for k, v in theirs.items() if k.startswith("sampled_aupro_cflow.")},
            train_paths=theirs["train_paths"],
            **{k: theirs[k] for k in LOSSES},
            # the weights after their step are the file their train.py saved (trained.*): not stored twice
            **{k: v for k, v in theirs.items() if k.startswith(("grad.", "initial.", "trained."))},
            metric_names=np.array(sorted(metrics)),
            metrics=np.array([metrics[k] for k in sorted(metrics)]),
        )
    print(ps.json_line("faprompt", deltas))


if __name__ == "__main__":
    main()
