"""VAND parity: the authors' APRIL-GAN code and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_vand.py --official /tmp/vand --official-env /tmp/vand-env [--write-fixture]

where /tmp/vand-env holds setuptools<81, tabulate, scikit-image, opencv-python-headless (what test.py and
prompt_ensemble.py import; docs/methods.md has the pip line). benchmarks/parity_vand_gelu.py runs the same
comparison at an input size other than the model's native one (the exact-GELU rule).

``--official`` is a checkout of ByChelsea/VAND-APRIL-GAN (its folder goes first on the official side's
``sys.path``, so ``import open_clip`` is the authors' vendored copy); ``--official-env`` holds what it
imports beyond zsad's environment (``setuptools<81`` for ``pkg_resources``). Nothing is fetched.

The official side (a subprocess) writes ``meta.json`` with the authors' ``data/mvtec.py`` solver (its class
list set to the generated categories), reads the files with their ``MVTecDataset`` (``aug_rate=0``: no
mosaic, which is random), their ``preprocess`` and target transform, encodes the texts with
``encode_text_with_prompt_ensemble``, runs ``encode_image(image, features_list)`` and ``LinearLayer``
(weights from a seed, shared with zsad's heads) and does one training step of ``train.py``: maps, focal +
dice loss, gradient. On CPU in float32 (their autocast is CUDA-only). Their ViT's forward moves an unused
attention sum to ``'cuda'`` and needs a 12th block, so the parity model here has 12 blocks and that one
``torch.zeros(...).to('cuda')`` is kept on the CPU by a shim (nothing else is changed).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

IMAGE_SIZE = 240
FEATURE_LAYERS = [3, 6, 9, 12]
HEADS_SEED = 1
COMPARED = ("images", "masks", "text", "image_embedding", "tokens", "maps", "image_scores", "loss", "grads")
METRICS = ("pixel_auroc", "image_auroc", "image_ap", "pixel_ap", "aupro_cflow")  # compared with zsad
MLP_ACTIVATION_NAMES = {"GELU": "gelu", "QuickGELU": "quick_gelu"}  # module class -> zsad's name


@dataclasses.dataclass(frozen=True)
class Case:
    """One VAND parity setting: the parity CLIP each side builds and how the authors' factory loads it."""

    fixture: Path
    official_model: str  # the model config the authors' factory reads (their ViT reads the 12th block)
    zsad_model: str  # the model zsad builds from the same weights
    # their create_model(..., pretrained="openai"): OpenAI's loader (QuickGELU, float16 weights), and at an
    # input size other than the model's native one their rebuild from official_model's config (exact GELU)
    openai: bool = False


# At the model's native 240 px, its weights loaded as they are (pretrained=None on both sides).
NATIVE = Case(ps.FIXTURES / "vand.npz", ps.PARITY_MODEL_12, ps.PARITY_MODEL_12)
FIXTURE = NATIVE.fixture


def vand_state_dict(seed: int = ps.WEIGHTS_SEED, case: Case = NATIVE) -> dict[str, torch.Tensor]:
    """The parity weights; through OpenAI's loader as it leaves them: rounded to float16 (OpenAI's files
    are float16 and its loader converts the model to float16 before loading them)."""
    weights = ps.parity_state_dict(seed, case.official_model)
    return {k: v.half().float() for k, v in weights.items()} if case.openai else weights


def heads_state_dict(width: int, dim: int) -> dict[str, torch.Tensor]:
    """The authors' ``LinearLayer`` initialisation after ``torch.manual_seed(HEADS_SEED)``, as ``fc.i.*``."""
    torch.manual_seed(HEADS_SEED)
    heads = torch.nn.ModuleList(torch.nn.Linear(width, dim) for _ in FEATURE_LAYERS)
    return {f"fc.{k}": v for k, v in heads.state_dict().items()}


def _step(maps_per_layer, loss, heads) -> dict[str, np.ndarray]:
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in heads.parameters()])
    return {"loss": loss.detach().numpy(), "grads": grads.numpy()}


def zsad_outputs(root: Path, case: Case = NATIVE, activation: str = "authors") -> dict[str, np.ndarray]:
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.clip.config import BackboneConfig
    from lightning_modules.metrics import binary_auroc, binary_average_precision, legacy_cflow_aupro
    from lightning_modules.registry import get_method
    from lightning_modules.vand import VAND, VANDConfig

    model, tokenizer = ps.parity_clip(vand_state_dict(case=case), case.zsad_model)
    cfg = VANDConfig(
        backbone=BackboneConfig(
            name=case.zsad_model,
            pretrained=None,
            image_size=IMAGE_SIZE,
            pos_embed_interpolation="bicubic",  # as configs/method/vand.yaml (open_clip's resize_pos_embed)
        ),
        activation=activation,
        feature_layers=list(FEATURE_LAYERS),
        fp16_autocast=False,
        mosaic_rate=0.0,
        cache_features=False,
    )
    vand = VAND(cfg, model, tokenizer)
    heads = heads_state_dict(vand.vision.width, vand.vision.output_dim)
    vand.heads.load_state_dict({k.removeprefix("fc."): v for k, v in heads.items()})
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        get_method("vand").preprocessing(cfg, "synthetic"),
    )
    vand.set_classes(list(data.categories))  # prompt_words=folder: the folder names
    batch = next(iter(data.test_dataloader()))
    images, ids, masks = batch["image"], batch["category_id"], batch["mask"]
    features = vand.encode_images(images)
    output = vand.scores(features, ids, (IMAGE_SIZE, IMAGE_SIZE))
    result = {
        "paths": np.array([str(Path(p).relative_to(root)) for p in batch["image_path"]]),
        "images": images.numpy(),
        "masks": masks.numpy(),
        "text": vand.class_text.transpose(1, 2).numpy(),  # [C, D, 2] as the authors' text_prompts
        "image_embedding": features["image_embedding"].numpy(),
        "tokens": torch.stack([features[f"tokens_{layer}"] for layer in FEATURE_LAYERS]).numpy(),
        "maps": torch.stack([p.detach() for p in output.pixel_probs]).numpy(),
        "image_scores": output.image_scores.numpy(),
        "mlp_activation": np.array(vand.activation),
    }
    amap, labels = output.anomaly_map().detach(), batch["label"]
    result |= {"category_ids": ids.numpy(), "anomaly_maps": amap.numpy()}
    rows = []
    for c in range(len(data.categories)):
        sel = ids == c
        rows.append(
            [
                binary_auroc(amap[sel], masks[sel]),
                binary_auroc(output.image_scores[sel], labels[sel]),
                binary_average_precision(output.image_scores[sel], labels[sel]),
                binary_average_precision(amap[sel], masks[sel]),
                legacy_cflow_aupro(amap[sel], masks[sel], fpr_limit=0.3),
            ]
        )
    result["metrics"] = np.asarray(rows)
    return result | _step(output.pixel_probs, vand.loss(output, masks), vand.heads)


class _CpuZeros:
    """``torch`` for the authors' transformer module, except that ``zeros(...).to('cuda')`` stays on the CPU."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        class _Stay(torch.Tensor):
            def to(self, *a, **k):
                return torch.Tensor(self)

        return torch.zeros(*args, **kwargs).as_subclass(_Stay)


def official_outputs(official: Path, root: Path, weights: Path, case: Case = NATIVE) -> dict[str, np.ndarray]:
    import open_clip  # the authors' vendored copy (the official folder leads PYTHONPATH)
    import open_clip.transformer as vendored_transformer
    import torchvision.transforms as transforms
    from data.mvtec import MVTecSolver
    from dataset import MVTecDataset
    from loss import BinaryDiceLoss, FocalLoss
    from model import LinearLayer
    from prompt_ensemble import encode_text_with_prompt_ensemble
    from torch.nn import functional as F

    assert Path(open_clip.__file__).is_relative_to(official), open_clip.__file__
    vendored_transformer.torch = _CpuZeros()
    import dataset

    dataset.Image.fromarray = ps.old_pillow_fromarray(dataset.Image.fromarray)
    ps.register_parity_model(case.official_model, open_clip)
    if case.openai:
        # their test.py's create_model_and_transforms(model, img_size, pretrained="openai"), with the weights
        # file registered as this model's "openai" download and looked up where it already is
        from open_clip import pretrained as vendored_pretrained

        url = f"file://{weights.resolve()}"
        vendored_pretrained._PRETRAINED[case.official_model] = {"openai": vendored_pretrained._pcfg(url)}
        model, _, preprocess = open_clip.create_model_and_transforms(
            case.official_model, IMAGE_SIZE, pretrained="openai", cache_dir=str(weights.resolve().parent)
        )
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(
            case.official_model, IMAGE_SIZE, pretrained=None
        )
        model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    tokenizer = open_clip.get_tokenizer(case.official_model)
    solver = MVTecSolver(root=str(root))
    solver.CLSNAMES = list(ps.CATEGORIES)
    solver.run()
    transform = transforms.Compose(
        [
            transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)),
            transforms.CenterCrop(IMAGE_SIZE),
            transforms.ToTensor(),
        ]
    )
    data = MVTecDataset(root=str(root), transform=preprocess, target_transform=transform, aug_rate=0.0)
    items = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data), shuffle=False)))
    config = ps.PARITY_MODELS[case.official_model]
    trainable_layer = LinearLayer(
        config["vision_cfg"]["width"], config["embed_dim"], len(FEATURE_LAYERS), "ViT"
    )
    trainable_layer.load_state_dict(heads_state_dict(config["vision_cfg"]["width"], config["embed_dim"]))
    # train.py, one step
    with torch.no_grad():
        obj_list = data.get_cls_names()
        text_prompts = encode_text_with_prompt_ensemble(model, obj_list, tokenizer, "cpu")
    image = items["img"]
    with torch.no_grad():
        image_features, patch_tokens = model.encode_image(image, FEATURE_LAYERS)
        raw_tokens = torch.stack([t[:, 1:] for t in patch_tokens])
        text_features = torch.stack([text_prompts[cls] for cls in items["cls_name"]], dim=0)
    patch_tokens = trainable_layer(patch_tokens)
    anomaly_maps = []
    for layer in range(len(patch_tokens)):
        # train.py divides in place; that backpropagates only under its CUDA autocast (norm runs on an fp32
        # copy of the fp16 tokens); in float32 on the CPU the same value is computed out of place
        patch_tokens[layer] = patch_tokens[layer] / patch_tokens[layer].norm(dim=-1, keepdim=True)
        anomaly_map = 100.0 * patch_tokens[layer] @ text_features
        B, L, C = anomaly_map.shape
        H = int(np.sqrt(L))
        anomaly_map = F.interpolate(
            anomaly_map.permute(0, 2, 1).view(B, 2, H, H),
            size=IMAGE_SIZE,
            mode="bilinear",
            align_corners=True,
        )
        anomaly_maps.append(torch.softmax(anomaly_map, dim=1))
    gt = items["img_mask"].squeeze().clone()
    gt[gt > 0.5], gt[gt <= 0.5] = 1, 0
    loss = 0
    for num in range(len(anomaly_maps)):
        loss += FocalLoss()(anomaly_maps[num], gt)
        loss += BinaryDiceLoss()(anomaly_maps[num][:, 1, :, :], gt)
    # test.py's zero-shot image score: softmax of 100 * normalised image features @ texts, anomalous column
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    image_scores = (100.0 * image_features[:, None] @ text_features)[:, 0].softmax(dim=-1)[:, 1]
    result = {
        "paths": np.array([str(Path(p).relative_to(root)) for p in items["img_path"]]),
        "images": image.numpy(),
        "masks": gt.numpy(),
        "text": torch.stack([text_prompts[c] for c in obj_list]).numpy(),
        "image_embedding": image_features.numpy(),
        "tokens": raw_tokens.numpy(),
        "maps": torch.stack([m.detach() for m in anomaly_maps]).numpy(),
        "image_scores": image_scores.detach().numpy(),
        # the activation their MLPs run (the open_clip Transformer's "gelu" module of every block)
        "mlp_activation": np.array(
            MLP_ACTIVATION_NAMES[type(model.visual.transformer.resblocks[0].mlp.gelu).__name__]
        ),
    }
    result["metrics"] = _test_py_metrics(obj_list, items, gt, anomaly_maps, image_scores)
    return result | _step(anomaly_maps, loss, trainable_layer)


def _test_py_metrics(obj_list, items, gt, anomaly_maps, image_scores) -> np.ndarray:
    """test.py's zero-shot metrics per class, as its metric loop computes them: sklearn on the summed
    anomalous maps and the image scores, and its own ``cal_pro_score`` on the [N, H, W] arrays it gets by
    squeezing axis 1 of the [N, 1, H, W] maps and masks it collected at batch size 1 (test.py, lines
    264-268, as since its first commit)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    from test import cal_pro_score

    maps = np.sum([m.detach()[:, 1].numpy() for m in anomaly_maps], axis=0)[:, None]  # [N, 1, H, W]
    masks, labels, scores = gt.numpy()[:, None], items["anomaly"].numpy(), image_scores.detach().numpy()
    rows = []
    for obj in obj_list:
        sel = np.array([c == obj for c in items["cls_name"]])
        gt_px, pr_px, gt_sp, pr_sp = masks[sel], maps[sel], labels[sel], scores[sel]
        row = [
            roc_auc_score(gt_px.ravel(), pr_px.ravel()),
            roc_auc_score(gt_sp, pr_sp),
            average_precision_score(gt_sp, pr_sp),
            average_precision_score(gt_px.ravel(), pr_px.ravel()),
        ]
        if len(gt_px.shape) == 4:  # test.py's own lines
            gt_px = gt_px.squeeze(1)
        if len(pr_px.shape) == 4:
            pr_px = pr_px.squeeze(1)
        rows.append([*row, cal_pro_score(gt_px, pr_px)])
    return np.asarray(rows)


def run_parity(case: Case, doc: str, script: str) -> None:
    """A parity script's main for ``case``: zsad here, the authors' side in a subprocess of ``script``."""
    args = ps.parity_arguments(
        doc, "checkout of ByChelsea/VAND-APRIL-GAN", "PYTHONPATH entries the official side needs"
    )
    if ps.serve_official_side(args, functools.partial(official_outputs, case=case)):
        return
    root, ours, theirs = ps.zsad_then_official(  # the checkout first: its vendored open_clip shadows zsad's
        args,
        script,
        functools.partial(zsad_outputs, case=case),
        vand_state_dict(case=case),
        (str(args.official.resolve()), args.official_env),
    )
    print(
        f"VAND: APRIL-GAN ({args.official}) vs zsad, {len(ours['paths'])} images, one training step; "
        f"{case.official_model} run at {IMAGE_SIZE} px: MLP activation theirs {theirs['mlp_activation']}, "
        f"zsad's {ours['mlp_activation']}"
    )
    if not np.array_equal(np.sort(theirs["paths"]), np.sort(ours["paths"])):
        raise SystemExit("the two sides read different files")
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]  # zsad's order
    for name in COMPARED:
        a = theirs[name]
        if name in ("images", "masks", "image_embedding", "image_scores"):
            a = a[order]
        elif name in ("tokens", "maps"):
            a = a[:, order]
        ps.print_delta(name, a, ours[name])
        theirs[name] = a
    for m, metric in enumerate(METRICS):
        ps.print_delta(f"{metric} (per category)", theirs["metrics"][:, m], ours["metrics"][:, m])
    cflow = METRICS.index("aupro_cflow")
    ps.print_delta(
        "  zsad's cflow AUPRO on their maps", theirs["metrics"][:, cflow], on_their_maps(theirs, ours)
    )
    ps.print_cflow_agreement(
        theirs["metrics"][:, cflow],
        ours["metrics"][:, cflow],
        ours["anomaly_maps"],
        ours["masks"],
        ours["category_ids"],
    )
    if args.write_fixture:
        ps.save_fixture(
            case.fixture,
            **ps.input_record(vand_state_dict(case=case), root, ours["paths"], theirs["masks"]),
            **sampled(theirs),
        )


def main() -> None:
    run_parity(NATIVE, __doc__, __file__)


def assert_test_py_metrics(official: np.ndarray, ours: np.ndarray, maps, masks, category_ids) -> None:
    """test.py's metrics per class (rows, :data:`METRICS` columns) against zsad's: sklearn's AUROC and AP to
    1e-6, the cflow AUPRO (test.py's ``cal_pro_score``) within how far map noise moves it on zsad's maps
    (its 200-step threshold grid flips on map noise; ``parity_support.cflow_aupro_agreement``)."""
    assert official.shape == ours.shape == (official.shape[0], len(METRICS))
    cflow = METRICS.index("aupro_cflow")
    exact = [i for i in range(len(METRICS)) if i != cflow]
    assert ps.max_abs_delta(official[:, exact], ours[:, exact]) <= 1e-6
    delta, tolerance = ps.cflow_aupro_agreement(official[:, cflow], ours[:, cflow], maps, masks, category_ids)
    assert (delta <= tolerance).all(), (delta, tolerance)


def on_their_maps(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> np.ndarray:
    """zsad's ``legacy_cflow_aupro`` per category on the authors' summed anomalous maps (zsad's order)."""
    from lightning_modules.metrics import legacy_cflow_aupro

    maps = theirs["maps"][:, :, 1].sum(axis=0)  # [layers, N, 2, H, W] -> [N, H, W], as test.py's np.sum
    ids = ours["category_ids"]
    return np.array([legacy_cflow_aupro(maps[ids == c], ours["masks"][ids == c]) for c in np.unique(ids)])


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps (the full tokens and maps are megabytes): texts, image embeddings and scores,
    the tokens of every 32nd patch, every 10th row and column of the anomalous maps, loss and gradient."""
    kept = {k: outputs[k] for k in ("text", "image_embedding", "image_scores", "loss", "grads", "metrics")}
    kept["mlp_activation"] = outputs["mlp_activation"]
    return kept | {
        "tokens_sampled": outputs["tokens"][:, :, ::32],
        "maps_sampled": outputs["maps"][:, :, 1, ::10, ::10],
    }


if __name__ == "__main__":
    main()
