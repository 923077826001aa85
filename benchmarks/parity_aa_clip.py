"""AA-CLIP parity: the authors' code and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_aa_clip.py --official /tmp/AA-CLIP --official-env /tmp/aaclip-env [--write-fixture]

``--official`` is a checkout of Mwxinnn/AA-CLIP (its folder leads the official side's ``PYTHONPATH``);
``--official-env`` holds what their modules import beyond zsad's environment (docs/methods.md#aa-clip:
``kornia==0.6.9``, ``pandas``; their unused ``import ipdb`` gets an empty module). Nothing is fetched.

The official side (a subprocess) builds their ``AdaptedCLIP`` after ``torch.manual_seed(3)`` (its initial
adapters are kept in the fixture and loaded by zsad), reads the files with their ``BaseSingleClassDataset``
(the test transform; the training augmentation is random) and runs, in float32 on the CPU:

- their test path per class: ``get_adapted_text_embedding``, ``get_predictions`` (batch 32, as test.py)
  and ``metrics_eval``, whose unrounded sklearn values and fused image scores are recorded;
- one step of ``train_text_adapter`` on a batch of 4 images (stage 1: their "surgery" CLIP from
  ``DAPM_replace``, whose V-V attention couples the images of a batch) and one step of
  ``train_image_adapter`` on a batch of 2 (stage 2): losses, every gradient, every parameter after Adam.

Shims on the official side, none changing a number: their ``create_model`` loads OpenAI's file, so the same
steps run on the parity weights (their ``CLIP`` built from the model config with the image size set, their
``resize_pos_embed``, ``load_state_dict(strict=True)``); their ``model/adapter.py`` hard-codes ViT-L-14-336's
sizes (widths 1024 / 768, 24 vision and 12 text blocks), which are replaced by the parity model's in the
source before it is loaded, as are the stage-1 levels ``[6, 12, 18, 24]`` train.py writes out; the parity classes join their ``CLASS_NAMES`` / ``REAL_NAMES`` / ``DOMAINS``
tables; ``roc_auc_score`` / ``average_precision_score`` of their metrics are wrapped to record the
unrounded values. The parity CLIP (``zsad-parity-aa-clip``) has 8 vision blocks (feature layers 2/4/6/8,
adapters after blocks 1..6, V-V blocks 3..8 with ``surgery_until_layer`` 7) and 4 text blocks, is built at
240 px and run at 288 px, so the position embedding is interpolated (bicubic, antialiased) as at 518 px.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "aa_clip.npz"
MODEL = "zsad-parity-aa-clip"
MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 240, "layers": 8, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}
IMAGE_SIZE = 288  # 18 x 18 patches: the 15 x 15 position embedding is interpolated
FEATURE_LAYERS = [2, 4, 6, 8]  # the four quarters, as [6, 12, 18, 24] on 24 blocks
SURGERY_UNTIL_LAYER = 7  # V-V blocks 3..8
ADAPTERS_SEED = 3
DATASET = "Parity"  # the name under which the parity classes join their tables
TEXT_BATCH = (
    "disc/test/scratch/000.png",
    "disc/test/good/000.png",
    "weave/test/hole/000.png",
    "weave/test/good/001.png",
)
IMAGE_BATCH = ("weave/test/stain/000.png", "disc/test/good/001.png")
COMPARED = ("images", "masks", "text", "patches", "image_feature", "raw_scores", "maps", "image_scores")
METRICS = ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap")

ps.PARITY_MODELS[MODEL] = MODEL_CONFIG


def state_dict(seed: int = ps.WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    """open_clip's initialisation of the parity CLIP after ``torch.manual_seed(seed)``."""
    return ps.parity_state_dict(seed, MODEL)


def zsad_config(backbone_interpolation: str = "bicubic", **overrides):
    from lightning_modules.aa_clip import AAClipConfig
    from lightning_modules.clip.config import BackboneConfig

    backbone = BackboneConfig(
        name=MODEL, pretrained=None, image_size=IMAGE_SIZE, pos_embed_interpolation=backbone_interpolation
    )
    return AAClipConfig(backbone=backbone, surgery_until_layer=SURGERY_UNTIL_LAYER, **overrides)


def preprocessing():
    """AA-CLIP's preprocessing as its spec declares it (RGB, bicubic resize; masks nearest, != 0)."""
    from lightning_modules.aa_clip.spec import AA_CLIP

    return AA_CLIP.preprocessing(zsad_config(), "synthetic")


def zsad_model(initial: dict[str, torch.Tensor], **overrides):
    """zsad's AA-CLIP on the parity CLIP, its adapters read from the authors' initial state."""
    from lightning_modules.aa_clip import AAClip

    clip, tokenizer = ps.parity_clip(state_dict(), MODEL)
    model = AAClip(zsad_config(**overrides), clip, tokenizer)
    model.adapters.load_state_dict(initial)
    return model


def named_grads(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def zsad_outputs(root: Path, initial: dict[str, torch.Tensor], **overrides) -> dict[str, np.ndarray]:
    """zsad on the files under ``root``, from the authors' initial adapters."""
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.aa_clip.model import fused_image_scores
    from lightning_modules.metrics import binary_auroc, binary_average_precision

    model = zsad_model(initial, **overrides)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        preprocessing(),
    )
    model.set_classes(list(data.categories))
    batch = next(iter(data.test_dataloader()))
    paths = [str(Path(p).relative_to(root)) for p in batch["image_path"]]
    images, masks, labels, ids = batch["image"], batch["mask"], batch["label"], batch["category_id"]
    size = (IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        model.freeze_texts()
        output = model(images)
        raw_scores, maps = model.predict(images, ids, size, medical=False)
    result = {
        "paths": np.array(paths),
        "category_ids": ids.numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": masks.numpy(),
        "text": model.class_text.transpose(1, 2).numpy(),  # [C, D, 2] as theirs
        "patches": torch.stack(output.patches).numpy(),
        "image_feature": output.image_feature.numpy(),
        "raw_scores": raw_scores.numpy(),
        "maps": maps.numpy(),
    }
    fused, rows = torch.zeros_like(raw_scores), []
    for c in range(len(data.categories)):
        sel = ids == c
        fused[sel] = fused_image_scores(raw_scores[sel], maps[sel], medical=False)
        gt = masks[sel] > 0.5
        rows.append(
            [
                binary_auroc(maps[sel], gt),
                binary_average_precision(maps[sel], gt),
                binary_auroc(fused[sel], labels[sel]),
                binary_average_precision(fused[sel], labels[sel]),
            ]
        )
    result["image_scores"], result["metrics"] = fused.numpy(), np.asarray(rows)

    # one step of each stage on fixed batches (their loops step Adam once per batch)
    def pick(chosen):
        index = [paths.index(p) for p in chosen]
        return images[index], masks[index], labels[index], ids[index]

    model.class_text = None
    text_optimizer = torch.optim.Adam(
        model.adapters.text_adapter.parameters(), lr=model.cfg.text_lr, betas=(0.5, 0.999)
    )
    x, m, _, c = pick(TEXT_BATCH)
    text_optimizer.zero_grad()
    losses = model.text_stage_loss(x, m, c)
    losses["loss"].backward()
    result["text_step_surgery"] = torch.stack(model.surgery_patches(x)).numpy()
    result["text_step_loss"] = losses["loss"].detach().numpy()
    grads = named_grads(model.adapters.text_adapter, "text_adapter.")
    text_optimizer.step()
    result |= {f"text_step_grad.{k}": v.numpy() for k, v in grads.items()}
    result |= {
        f"text_step_param.{k}": v.detach().numpy().copy()
        for k, v in model.adapters.text_adapter.state_dict().items()
    }

    model.freeze_texts()
    image_optimizer = torch.optim.Adam(
        model.adapters.image_adapter.parameters(), lr=model.cfg.image_lr, betas=(0.5, 0.999)
    )
    x, m, lab, c = pick(IMAGE_BATCH)
    image_optimizer.zero_grad()
    losses = model.image_stage_loss(x, m, lab, c)
    losses["loss"].backward()
    result["image_step_loss"] = losses["loss"].detach().numpy()
    grads = named_grads(model.adapters.image_adapter, "image_adapter.")
    image_optimizer.step()
    result |= {f"image_step_grad.{k}": v.numpy() for k, v in grads.items()}
    result |= {
        f"image_step_param.{k}": v.detach().numpy().copy()
        for k, v in model.adapters.image_adapter.state_dict().items()
    }
    return result


# --- the authors' side -----------------------------------------------------------------------------------
SIZE_SHIMS = {  # model/adapter.py's ViT-L-14-336 literals -> the parity model's
    "SimpleAdapter(1024, 1024)": "SimpleAdapter({vw}, {vw})",
    "SimpleProj(1024, 768, relu)": "SimpleProj({vw}, {e}, relu)",
    "SimpleAdapter(768, 768)": "SimpleAdapter({tw}, {tw})",
    "SimpleProj(768, 768, relu=True)": "SimpleProj({tw}, {e}, relu=True)",
    "range(24)": "range({vl})",
    "range(12)": "range({tl})",
}


def _load_patched(official: Path, relative: str, name: str, shims: dict[str, str]) -> types.ModuleType:
    """Their module ``relative`` loaded as ``name`` with each literal of ``shims`` replaced (and present)."""
    source = (official / relative).read_text()
    for literal, replacement in shims.items():
        assert literal in source, (relative, literal)
        source = source.replace(literal, replacement)
    module = types.ModuleType(name)
    module.__file__ = str(official / relative)
    module.__package__ = name.rpartition(".")[0]
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def _load_their_modules(official: Path) -> None:
    """Their model/adapter.py and train.py with the parity model's sizes in place of ViT-L-14-336's."""
    import model  # noqa: F401 - their package, for adapter.py's relative import

    sizes = {
        "vw": MODEL_CONFIG["vision_cfg"]["width"],
        "e": MODEL_CONFIG["embed_dim"],
        "tw": MODEL_CONFIG["text_cfg"]["width"],
        "vl": MODEL_CONFIG["vision_cfg"]["layers"],
        "tl": MODEL_CONFIG["text_cfg"]["layers"],
    }
    shims = {k: v.format(**sizes) for k, v in SIZE_SHIMS.items()}
    _load_patched(official, "model/adapter.py", "model.adapter", shims)
    # train_text_adapter's surgery levels are a literal too (not AdaptedCLIP's levels)
    _load_patched(official, "train.py", "train", {"[6, 12, 18, 24]": str(FEATURE_LAYERS)})


def _their_create_model(weights: dict[str, torch.Tensor]):
    """Their create_model for a local state dict: what it does after ``load_openai_model``."""
    import copy

    from model.model import CLIP, resize_pos_embed

    def create_model(model_name, img_size, device="cpu", **kwargs):
        model_cfg = copy.deepcopy(MODEL_CONFIG)
        model_cfg["vision_cfg"]["image_size"] = img_size
        model = CLIP(**model_cfg, cast_dtype=None)
        state = dict(weights)
        resize_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
        return model.to(device)

    return create_model


def their_side(official: Path, root: Path, weights: Path) -> types.SimpleNamespace:
    """Their modules with the shims above, the parity classes in their tables, their ``AdaptedCLIP`` on the
    parity weights (adapters from ``torch.manual_seed(ADAPTERS_SEED)``) and a ``meta.jsonl`` of the files
    under ``root`` (their dataset format); this script's and speed_aa_clip.py's official side."""
    sys.modules.setdefault("ipdb", types.ModuleType("ipdb"))  # imported by their modules, never called
    import dataset.constants as constants
    import forward_utils
    import model.clip

    assert Path(forward_utils.__file__).is_relative_to(official), forward_utils.__file__
    _load_their_modules(official)
    model.clip.create_model = _their_create_model(torch.load(weights, weights_only=True))
    categories = list(ps.CATEGORIES)
    constants.CLASS_NAMES[DATASET] = categories
    constants.REAL_NAMES[DATASET] = {c: c for c in categories}
    constants.DOMAINS[DATASET] = "Industrial"
    import test as their_test
    import train as their_train
    from dataset import BaseSingleClassDataset
    from model.adapter import AdaptedCLIP

    clip_model = model.clip.create_model(model_name=MODEL, img_size=IMAGE_SIZE, device="cpu")
    clip_model.eval()
    torch.manual_seed(ADAPTERS_SEED)
    adapted = AdaptedCLIP(
        clip_model=clip_model,
        text_adapt_weight=0.1,
        image_adapt_weight=0.1,
        text_adapt_until=3,
        image_adapt_until=6,
        levels=FEATURE_LAYERS,
        relu=False,  # their --relu (store_true)
    ).eval()
    meta = root / "meta.jsonl"
    with meta.open("w") as f:
        for path in sorted(root.glob("*/test/*/*.png")):
            relative = path.relative_to(root)
            category, _, kind, name = relative.parts
            row = {"image_path": str(relative), "label": int(kind != "good"), "class_name": category}
            if kind != "good":
                row["mask_path"] = f"{category}/ground_truth/{kind}/{Path(name).stem}_mask.png"
            f.write(json.dumps(row) + "\n")
    return types.SimpleNamespace(
        adapted=adapted,
        categories=categories,
        meta=meta,
        forward_utils=forward_utils,
        test=their_test,
        train=their_train,
        dataset=lambda category: BaseSingleClassDataset(str(root), str(meta), IMAGE_SIZE, category),
        create_model=model.clip.create_model,
        AdaptedCLIP=AdaptedCLIP,
    )


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    import logging

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    side = their_side(official, root, weights)
    adapted, categories, forward_utils = side.adapted, side.categories, side.forward_utils
    their_test, their_train = side.test, side.train
    recorded: list[float] = []
    fused_scores: list[np.ndarray] = []
    original_auc, original_ap = forward_utils.roc_auc_score, forward_utils.average_precision_score

    def roc_auc_score(labels, preds):
        if len(recorded) % 4 == 2:  # the third call of a class: the fused image scores
            fused_scores.append(np.asarray(preds).copy())
        recorded.append(original_auc(labels, preds))
        return recorded[-1]

    def average_precision_score(labels, preds):
        recorded.append(original_ap(labels, preds))
        return recorded[-1]

    forward_utils.roc_auc_score, forward_utils.average_precision_score = (
        roc_auc_score,
        average_precision_score,
    )
    forwards: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    original_forward = side.AdaptedCLIP.forward

    def forward(self, x):
        out = original_forward(self, x)
        forwards.append(([t.detach().clone() for t in out[0]], out[1].detach().clone()))
        return out

    side.AdaptedCLIP.forward = forward
    initial = {
        k: v.clone()
        for k, v in adapted.state_dict().items()
        if k.startswith(("text_adapter", "image_adapter"))
    }

    # their test path, per class (test.py main)
    with torch.no_grad():
        text_embeddings = forward_utils.get_adapted_text_embedding(adapted, DATASET, "cpu")
    result: dict[str, list] = {k: [] for k in ("paths", "images", "masks", "raw_scores", "maps", "labels")}
    for category in categories:
        data = side.dataset(category)
        loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=False)
        with torch.no_grad():
            masks, labels, preds, preds_image, files = their_test.get_predictions(
                adapted, text_embeddings[category], loader, "cpu", IMAGE_SIZE, DATASET
            )
        forward_utils.metrics_eval(masks, labels, preds, preds_image, category, "Industrial")
        result["paths"] += files
        result["images"] += [data[i]["image"].numpy() for i in range(len(data))]
        result["masks"].append(masks[:, 0])
        result["labels"].append(labels)
        result["raw_scores"].append(preds_image)
        result["maps"].append(preds)
    out = {
        k: np.concatenate(v) if k in ("masks", "labels", "raw_scores", "maps") else np.array(v)
        for k, v in result.items()
    }
    out["image_scores"] = np.concatenate(fused_scores)
    out["metrics"] = np.array(recorded).reshape(len(categories), 4)  # pixel AUROC, AP, image AUROC, AP
    out["text"] = torch.stack([text_embeddings[c] for c in categories]).numpy()
    out["patches"] = torch.stack(
        [torch.cat(layer) for layer in zip(*[f[0] for f in forwards], strict=True)]
    ).numpy()
    out["image_feature"] = torch.cat([f[1] for f in forwards]).numpy()

    # one step of each stage (train.py), recording gradients before each Adam step
    by_path = {}
    for category in categories:
        data = side.dataset(category)
        by_path |= {data.meta[i]["image_path"]: data[i] for i in range(len(data))}
    grads: dict[str, torch.Tensor] = {}
    learnable = {
        n: p for n, p in adapted.named_parameters() if n.startswith(("text_adapter", "image_adapter"))
    }

    def before_step(optimizer, args, kwargs):  # the gradients of the parameters this optimiser steps
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        grads.clear()
        grads.update({n: p.grad.detach().clone() for n, p in learnable.items() if id(p) in stepped})

    hook = register_optimizer_step_pre_hook(before_step)
    losses: list[torch.Tensor] = []
    original_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        losses.append(self.detach().clone())
        return original_backward(self, *args, **kwargs)

    torch.Tensor.backward = backward
    surgery_inputs: list[torch.Tensor] = []
    original_similarity = their_train.calculate_similarity_map

    def similarity(patch_features, text, img_size, *args, **kwargs):
        surgery_inputs.append(patch_features.detach().clone())
        return original_similarity(patch_features, text, img_size, *args, **kwargs)

    logger = logging.getLogger("aa_clip_parity")
    save = Path(tempfile.mkdtemp(prefix="zsad-aa-clip-official-"))
    clip_surgery = side.create_model(model_name=MODEL, img_size=IMAGE_SIZE, device="cpu")
    clip_surgery.eval()
    clip_surgery.visual.DAPM_replace(DPAM_layer=SURGERY_UNTIL_LAYER)
    text_optimizer = torch.optim.Adam(adapted.text_adapter.parameters(), lr=1e-5, betas=(0.5, 0.999))
    batch = torch.utils.data.default_collate([by_path[p] for p in TEXT_BATCH])
    their_train.calculate_similarity_map = similarity
    their_train.train_text_adapter(
        adapted,
        clip_surgery,
        0.1,
        [batch],
        text_optimizer,
        "cpu",
        0,
        str(save),
        1,
        DATASET,
        IMAGE_SIZE,
        logger,
    )
    their_train.calculate_similarity_map = original_similarity
    out["text_step_surgery"] = torch.stack(surgery_inputs).numpy()
    out["text_step_loss"] = losses[-1].numpy()
    out |= {f"text_step_grad.{k}": v.numpy() for k, v in grads.items()}
    out |= {
        f"text_step_param.{k}": v.detach().numpy().copy()
        for k, v in adapted.text_adapter.state_dict().items()
    }

    with torch.no_grad():
        text_embeddings = forward_utils.get_adapted_text_embedding(adapted, DATASET, "cpu")
    image_optimizer = torch.optim.Adam(adapted.image_adapter.parameters(), lr=5e-4, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(image_optimizer, milestones=[16000, 32000], gamma=0.5)
    batch = torch.utils.data.default_collate([by_path[p] for p in IMAGE_BATCH])
    their_train.train_image_adapter(
        adapted,
        text_embeddings,
        [batch],
        image_optimizer,
        scheduler,
        "cpu",
        0,
        str(save),
        1,
        IMAGE_SIZE,
        logger,
    )
    out["image_step_loss"] = losses[-1].numpy()
    out |= {f"image_step_grad.{k}": v.numpy() for k, v in grads.items()}
    out |= {
        f"image_step_param.{k}": v.detach().numpy().copy()
        for k, v in adapted.image_adapter.state_dict().items()
    }
    hook.remove()
    torch.Tensor.backward = original_backward
    return out | {f"initial.{k}": v.numpy() for k, v in initial.items()}


# --- comparison ------------------------------------------------------------------------------------------
def initial_state(outputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The authors' initial adapters (their state-dict names) from the official outputs or the fixture."""
    return {
        k.removeprefix("initial."): torch.from_numpy(v)
        for k, v in outputs.items()
        if k.startswith("initial.")
    }


def step_tensors(outputs: dict[str, np.ndarray], stage: str, kind: str) -> dict[str, np.ndarray]:
    """One stage's gradients (``kind`` "grad", named as their AdaptedCLIP's parameters) or parameters after
    the step ("param", named within ``text_adapter`` / ``image_adapter``), from either side's outputs."""
    head = f"{stage}_step_{kind}."
    return {k.removeprefix(head): v for k, v in outputs.items() if k.startswith(head)}


def step_deltas(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |delta| of each stage's loss, gradients and parameters after Adam."""
    deltas = {}
    for stage in ("text", "image"):
        deltas[f"{stage}_step_loss"] = ps.max_abs_delta(
            theirs[f"{stage}_step_loss"], ours[f"{stage}_step_loss"]
        )
        for kind in ("grad", "param"):
            a, b = step_tensors(theirs, stage, kind), step_tensors(ours, stage, kind)
            assert sorted(a) == sorted(b), (sorted(a), sorted(b))
            deltas[f"{stage}_step_{kind}s"] = max(ps.max_abs_delta(a[k], b[k]) for k in a)
    return deltas


STEP_PREFIXES = ("text_step_", "image_step_")


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps: texts, image features, raw and fused scores, metrics, every 16th patch of
    every layer (and of stage 1's surgery features), every 9th row and column of the maps, and each stage's
    loss, gradients and parameters after its step."""
    kept = ("text", "image_feature", "raw_scores", "image_scores", "metrics")
    steps = {k: v for k, v in outputs.items() if k.startswith(STEP_PREFIXES) and k != "text_step_surgery"}
    return (
        {k: outputs[k] for k in kept}
        | steps
        | {
            "patches_sampled": outputs["patches"][:, :, ::16],
            "surgery_sampled": outputs["text_step_surgery"][:, :, ::16],
            "maps_sampled": outputs["maps"][:, ::9, ::9],
        }
    )


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of Mwxinnn/AA-CLIP", "PYTHONPATH entries the official side needs"
    )
    if ps.serve_official_side(args, official_outputs):
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-parity-aa-clip-"))
    root = ps.write_parity_images(work / "mvtec")
    pythonpath = (str(args.official.resolve()), args.official_env)
    theirs = ps.run_official_side(__file__, args.official, root, state_dict(), work, pythonpath)
    ours = zsad_outputs(root, initial_state(theirs))
    print(f"AA-CLIP: official ({args.official}) vs zsad, {len(ours['paths'])} images, one step per stage")
    if not np.array_equal(np.sort(theirs["paths"]), np.sort(ours["paths"])):
        raise SystemExit("the two sides read different files")
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]  # zsad's order
    for name in ("labels", *COMPARED):
        if name not in ("text",):
            theirs[name] = theirs[name][:, order] if name == "patches" else theirs[name][order]
    deltas = {name: ps.print_delta(name, theirs[name], ours[name]) for name in COMPARED}
    deltas["text_step_surgery"] = ps.print_delta(
        "stage-1 surgery patches", theirs["text_step_surgery"], ours["text_step_surgery"]
    )
    for name, delta in step_deltas(theirs, ours).items():
        print(f"  {name:<32} max |delta| = {delta:.3e}")
        deltas[name] = delta
    deltas["metrics"] = ps.print_delta(
        "metrics (" + ", ".join(METRICS) + ")", theirs["metrics"], ours["metrics"]
    )
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(state_dict(), root, ours["paths"], theirs["masks"]),
            **{k: v for k, v in theirs.items() if k.startswith("initial.")},
            **sampled(theirs),
        )
    print(ps.json_line("aa_clip", deltas))


if __name__ == "__main__":
    main()
