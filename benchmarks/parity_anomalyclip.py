"""AnomalyCLIP parity: the authors' code and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_anomalyclip.py --official /tmp/AnomalyCLIP [--write-fixture]

``--official`` is a checkout of zqhang/AnomalyCLIP (its folder leads the official side's ``sys.path``).
Nothing is fetched. The official side (a subprocess) writes ``meta.json`` with their
``generate_dataset_json/mvtec.py`` solver (class list set to the generated categories), builds their model
with ``build_model`` (as ``AnomalyCLIP_lib.load`` does) from the parity weights saved as a file (OpenAI's key layout, which open_clip
shares), initialises their ``AnomalyCLIP_PromptLearner`` from a seed, reads the files with their ``Dataset``
and ``utils.get_transform`` and runs, in float32 on the CPU:

- test.py's loop (batch size 1): DPAM, text features, image scores, anomaly maps summed over the layers
  and smoothed with scipy's ``gaussian_filter(sigma=4)``, then their sklearn image AUROC / AP and pixel AUROC;
  their AUPRO needs scikit-image, so both AUPROs (exact and cflow-style) come from zsad's evaluator run on
  their maps;
- one step of train.py on the same files: image CE + 4 * (focal + dice + dice), ``backward``, the gradient
  of every learnable prompt (the deep tokens' gradients are float16-rounded per prompt copy by their
  ``.half()``).

Shims on the official side, none in a computed path: ``thop`` (imported, unused) and ``pkg_resources``
(only ``packaging`` is used) are stubbed, ``skimage`` (AUPRO only) is stubbed, their class list is
replaced by the generated categories, Pillow >= 11's refusal of a float64 mask is undone as in
parity_vand.py, and train.py's ``label.cuda()`` runs on the CPU. The parity CLIP has 64-wide heads (their
builder assumes width // 64 heads) and is built at 112 px but run at 154 px, so the position embedding is
interpolated as at 518 px.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "anomalyclip.npz"
MODEL = "zsad-parity-anomalyclip"
MODEL_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 112, "layers": 6, "width": 64, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 4},
}
IMAGE_SIZE = 154  # 11 x 11 patches: the 8 x 8 position embedding is interpolated
FEATURE_LAYERS = [5, 6]
DPAM_LAYER = 4  # theirs: blocks -1..-(DPAM_LAYER - 1), i.e. 4..6 of 6 -> zsad's dpam_start_block=4
DPAM_START_BLOCK = MODEL_CONFIG["vision_cfg"]["layers"] - DPAM_LAYER + 2
DESIGN = {"Prompt_length": 12, "learnabel_text_embedding_depth": 4, "learnabel_text_embedding_length": 4}
PROMPTS_SEED = 3
SIGMA = 4
COMPARED = ("images", "masks", "text", "image_embedding", "patches", "probs", "image_scores", "maps")
STEP = ("loss", "image_loss", "grads")
REPORTED = ("image_auroc", "image_ap", "pixel_auroc", "aupro", "aupro_cflow")  # test.py's table, both AUPROs
NUM_CONTEXT_GRADS = 2 * DESIGN["Prompt_length"] * MODEL_CONFIG["text_cfg"]["width"]  # ctx_pos, ctx_neg first


def gradients_agree(official: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """Per element: the context vectors' gradients (float32 in their code) within 1e-5 of their largest
    magnitude, the deep tokens' (float16-rounded per prompt copy by their ``.half()``) within one float16
    ulp of the official value."""
    official, ours = official.astype(np.float64), ours.astype(np.float64)
    context = slice(0, NUM_CONTEXT_GRADS)
    tolerance = np.spacing(np.abs(official).astype(np.float16)).astype(np.float64)
    tolerance[context] = 1e-5 * np.abs(official[context]).max()
    return np.abs(official - ours) <= tolerance


def register_model() -> None:
    import open_clip

    if MODEL not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="zsad-parity-"))
        open_clip.add_model_config(ps.write_model_config(folder, MODEL_CONFIG, MODEL))


def state_dict(seed: int = ps.WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    """open_clip's initialisation of the parity CLIP after ``torch.manual_seed(seed)``."""
    import open_clip

    register_model()
    torch.manual_seed(seed)
    return open_clip.create_model(MODEL, pretrained=None).state_dict()


def zsad_config():
    from lightning_modules.anomalyclip import AnomalyCLIPConfig
    from lightning_modules.clip.config import BackboneConfig

    return AnomalyCLIPConfig(
        backbone=BackboneConfig(name=MODEL, pretrained=None, image_size=IMAGE_SIZE),
        prompt_length=DESIGN["Prompt_length"],
        deep_prompt_length=DESIGN["learnabel_text_embedding_length"],
        deep_prompt_blocks=list(range(2, DESIGN["learnabel_text_embedding_depth"] + 1)),
        dpam_start_block=DPAM_START_BLOCK,
        map_layers=list(FEATURE_LAYERS),
        cache_features=False,
    )


def grads_of(tensors) -> np.ndarray:
    return torch.cat([t.grad.flatten() for t in tensors]).numpy()


def zsad_outputs(root: Path, prompt_learner: dict[str, torch.Tensor], cfg=None) -> dict[str, np.ndarray]:
    """zsad on the files under ``root`` with the authors' prompt initialisation ``prompt_learner``."""
    import open_clip

    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.anomalyclip import AnomalyCLIP, AnomalyCLIPModule
    from lightning_modules.anomalyclip.official_checkpoint import zsad_state_dict
    from lightning_modules.registry import get_method

    register_model()
    cfg = cfg or zsad_config()
    clip = open_clip.create_model(MODEL, pretrained=None)
    clip.load_state_dict(state_dict())
    model = AnomalyCLIP(cfg, clip, open_clip.get_tokenizer(MODEL))
    module = AnomalyCLIPModule(cfg, model=model)
    module.load_state_dict(
        zsad_state_dict(module, {"prompt_learner": prompt_learner}, "parity"), strict=False
    )
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        get_method("anomalyclip").preprocessing(cfg, "synthetic"),
    )
    batch = next(iter(data.test_dataloader()))
    images, masks, labels = batch["image"], batch["mask"], batch["label"]
    size = tuple(masks.shape[-2:])
    features = model.encode_images(images)
    text = model.text_embeddings()
    output = model.scores(features, size, text=text)
    losses = model.loss(output, labels, masks)
    losses["loss"].backward()
    scores, maps = model.predict(images, size)
    result = {
        "paths": np.array([str(Path(p).relative_to(root)) for p in batch["image_path"]]),
        "categories": np.array(list(data.categories)),
        "category_ids": batch["category_id"].numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": (masks > 0.5).float().numpy(),
        "text": text.detach().numpy(),
        "image_embedding": features.image_embedding.numpy(),
        "patches": np.stack([features.patch_embeddings[layer].numpy() for layer in FEATURE_LAYERS]),
        "probs": np.stack([output.pixel_probs[layer][:, 1].detach().numpy() for layer in FEATURE_LAYERS]),
        "image_scores": scores.numpy(),
        "maps": maps.numpy(),
        "loss": losses["loss"].detach().numpy(),
        "image_loss": losses["image_loss"].detach().numpy(),
        "grads": grads_of(model.trainable_parameters()),
    }
    metrics = ps.evaluator_metrics(
        result["categories"], result["category_ids"], scores, labels, maps, masks > 0.5
    )
    return result | {
        "metric_names": np.array(sorted(metrics)),
        "metrics": np.array([metrics[k] for k in sorted(metrics)]),
    }


def _stub_modules() -> None:
    """Modules the official code imports but never uses in the paths run here."""
    import packaging.version

    sys.modules["thop"] = types.SimpleNamespace(profile=None)
    sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)
    skimage = types.ModuleType("skimage")
    skimage.measure = None  # their AUPRO only; zsad's evaluator computes both AUPROs on their maps
    sys.modules["skimage"] = skimage


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(official))  # before benchmarks/ (which has its own metrics.py)
    _stub_modules()
    import AnomalyCLIP_lib
    import dataset
    import torch.nn.functional as F
    from AnomalyCLIP_lib.build_model import build_model
    from loss import BinaryDiceLoss, FocalLoss
    from metrics import image_level_metrics, pixel_level_metrics
    from prompt_ensemble import AnomalyCLIP_PromptLearner
    from scipy.ndimage import gaussian_filter
    from utils import get_transform

    assert Path(AnomalyCLIP_lib.__file__).is_relative_to(official), AnomalyCLIP_lib.__file__
    sys.path.insert(0, str(official / "generate_dataset_json"))
    from mvtec import MVTecSolver

    categories = list(ps.CATEGORIES)
    dataset.generate_class_info = lambda name: (categories, {c: i for i, c in enumerate(categories)})
    dataset.Image.fromarray = ps.old_pillow_fromarray(dataset.Image.fromarray)
    solver = MVTecSolver(root=str(root))
    solver.CLSNAMES = categories
    solver.run()
    args = types.SimpleNamespace(image_size=IMAGE_SIZE)
    preprocess, target_transform = get_transform(args)
    data = dataset.Dataset(str(root), preprocess, target_transform, dataset_name="mvtec")

    # what AnomalyCLIP_lib.load does with a state dict on the CPU (its file reading expects OpenAI's JIT
    # archive: for a plain state dict it reads on where torch.jit.load stopped)
    model = build_model(str(weights), torch.load(weights, weights_only=True), DESIGN).to("cpu").float()
    model.eval()
    torch.manual_seed(PROMPTS_SEED)
    prompt_learner = AnomalyCLIP_PromptLearner(model.to("cpu"), DESIGN)
    initial = {k: v.detach().clone() for k, v in prompt_learner.state_dict().items()}
    model.visual.DAPM_replace(DPAM_layer=DPAM_LAYER)

    # test.py (batch size 1)
    prompts, tokenized_prompts, compound_prompts_text = prompt_learner(cls_id=None)
    with torch.no_grad():
        text_features = model.encode_text_learn(prompts, tokenized_prompts, compound_prompts_text).float()
        text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    rows = {k: [] for k in ("images", "masks", "image_embedding", "patches", "probs", "image_scores", "maps")}
    rows |= {"paths": [], "cls": [], "labels": []}
    for items in torch.utils.data.DataLoader(data, batch_size=1, shuffle=False):
        image = items["img"]
        gt_mask = items["img_mask"]
        gt_mask[gt_mask > 0.5], gt_mask[gt_mask <= 0.5] = 1, 0
        with torch.no_grad():
            image_features, patch_features = model.encode_image(image, FEATURE_LAYERS, DPAM_layer=DPAM_LAYER)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text_probs = image_features @ text_features.permute(0, 2, 1)
            text_probs = (text_probs / 0.07).softmax(-1)[:, 0, 1]
            anomaly_map_list, patches, probs = [], [], []
            for patch_feature in patch_features:
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], args.image_size)
                anomaly_map_list.append((similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0)
                patches.append(patch_feature[0, 1:])
                probs.append(similarity_map[0, ..., 1])
            anomaly_map = torch.stack(anomaly_map_list).sum(dim=0)
            anomaly_map = torch.stack(
                [torch.from_numpy(gaussian_filter(i, sigma=SIGMA)) for i in anomaly_map]
            )
        rows["paths"].append(str(Path(items["img_path"][0]).relative_to(root)))
        rows["cls"].append(items["cls_name"][0])
        rows["labels"].append(int(items["anomaly"][0]))
        rows["images"].append(image[0])
        rows["masks"].append(gt_mask[0, 0])
        rows["image_embedding"].append(image_features[0])
        rows["patches"].append(torch.stack(patches))
        rows["probs"].append(torch.stack(probs))
        rows["image_scores"].append(text_probs[0])
        rows["maps"].append(anomaly_map[0])
    result = {
        k: np.array(v) if k in ("paths", "cls", "labels") else torch.stack(v).numpy() for k, v in rows.items()
    }
    result["patches"] = result["patches"].transpose(1, 0, 2, 3)  # [layers, B, N, D] as zsad's
    result["probs"] = result["probs"].transpose(1, 0, 2, 3)
    result["text"] = text_features[0].numpy()

    # their metrics (sklearn) per category
    metrics = {}
    for c in categories:
        keep = result["cls"] == c
        entry = {
            "gt_sp": result["labels"][keep],
            "pr_sp": result["image_scores"][keep],
            "imgs_masks": result["masks"][keep],
            "anomaly_maps": result["maps"][keep],
        }
        metrics[f"{c}/image_auroc"] = image_level_metrics({c: entry}, c, "image-auroc")
        metrics[f"{c}/image_ap"] = image_level_metrics({c: entry}, c, "image-ap")
        metrics[f"{c}/pixel_auroc"] = pixel_level_metrics({c: entry}, c, "pixel-auroc")
    result["official_metric_names"] = np.array(sorted(metrics))
    result["official_metrics"] = np.array([metrics[k] for k in sorted(metrics)])

    # train.py, one step on the same files (one batch)
    loss_focal, loss_dice = FocalLoss(), BinaryDiceLoss()
    items = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data), shuffle=False)))
    image, label = items["img"], items["anomaly"]
    gt = items["img_mask"].squeeze()
    gt[gt > 0.5] = 1
    gt[gt <= 0.5] = 0
    with torch.no_grad():
        image_features, patch_features = model.encode_image(image, FEATURE_LAYERS, DPAM_layer=DPAM_LAYER)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    prompts, tokenized_prompts, compound_prompts_text = prompt_learner(cls_id=None)
    text_features = model.encode_text_learn(prompts, tokenized_prompts, compound_prompts_text).float()
    text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    text_probs = image_features.unsqueeze(1) @ text_features.permute(0, 2, 1)
    text_probs = text_probs[:, 0, ...] / 0.07
    image_loss = F.cross_entropy(text_probs.squeeze(), label.long())  # theirs: label.long().cuda()
    similarity_map_list = []
    for patch_feature in patch_features:
        patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
        similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
        similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], args.image_size)
        similarity_map_list.append(similarity_map.permute(0, 3, 1, 2))
    loss = 0
    for similarity_map in similarity_map_list:
        loss += loss_focal(similarity_map, gt)
        loss += loss_dice(similarity_map[:, 1, :, :], gt)
        loss += loss_dice(similarity_map[:, 0, :, :], 1 - gt)
    loss = 4 * loss
    (loss + image_loss).backward()
    step_paths = [str(Path(p).relative_to(root)) for p in items["img_path"]]
    assert step_paths == list(result["paths"]), "the training batch and the test loop read different orders"
    learnable = [prompt_learner.ctx_pos, prompt_learner.ctx_neg, *prompt_learner.compound_prompts_text]
    result |= {
        "loss": (loss + image_loss).detach().numpy(),
        "image_loss": image_loss.detach().numpy(),
        "grads": grads_of(learnable),
    }
    kept = ("ctx_pos", "ctx_neg", "tokenized_prompts_pos", "tokenized_prompts_neg")
    return result | {
        f"prompt_learner.{k}": v.numpy()
        for k, v in initial.items()
        if k in kept or k.startswith("compound_prompts_text.")
    }


def prompt_learner_of(outputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The authors' initial prompt learner state as stored in the official outputs (or the fixture)."""
    prefix = "prompt_learner."
    return {k.removeprefix(prefix): torch.from_numpy(v) for k, v in outputs.items() if k.startswith(prefix)}


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps: texts, image embeddings and scores, every 8th patch embedding, every 7th row
    and column of the per-layer probabilities and of the final maps, losses, gradients and metrics."""
    kept = {k: outputs[k] for k in ("text", "image_embedding", "image_scores", *STEP) if k in outputs}
    return kept | {
        "patches_sampled": outputs["patches"][:, :, ::8],
        "probs_sampled": outputs["probs"][:, :, ::7, ::7],
        "maps_sampled": outputs["maps"][:, ::7, ::7],
    }


def official_metrics(theirs: dict[str, np.ndarray]) -> dict[str, float]:
    """Their sklearn metrics and, for the AUPROs, zsad's evaluator on their maps (see the module docstring)."""
    ids = np.array([list(ps.CATEGORIES).index(c) for c in theirs["cls"]])
    ours_on_theirs = ps.evaluator_metrics(
        ps.CATEGORIES, ids, theirs["image_scores"], theirs["labels"], theirs["maps"], theirs["masks"]
    )
    sklearn = dict(
        zip(theirs["official_metric_names"].tolist(), theirs["official_metrics"].tolist(), strict=True)
    )
    return {k: sklearn.get(k, v) for k, v in ours_on_theirs.items() if k.split("/")[1] in REPORTED}


def main() -> None:
    args = ps.parity_arguments(__doc__, "checkout of zqhang/AnomalyCLIP")
    if ps.serve_official_side(args, official_outputs):
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-parity-anomalyclip-"))
    root = ps.write_parity_images(work / "mvtec")
    theirs = ps.run_official_side(__file__, args.official, root, state_dict(), work)
    ours = zsad_outputs(root, prompt_learner_of(theirs))
    print(f"AnomalyCLIP: official ({args.official}) vs zsad, {len(ours['paths'])} images, one training step")
    if not np.array_equal(np.sort(theirs["paths"]), np.sort(ours["paths"])):
        raise SystemExit("the two sides read different files")
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]  # zsad's order
    for name in ("cls", "labels", *COMPARED):
        if name in ("patches", "probs"):  # [layers, B, ...]
            theirs[name] = theirs[name][:, order]
        elif name != "text":
            theirs[name] = theirs[name][order]
    for name in (*COMPARED, *STEP):
        ps.print_delta(name, theirs[name], ours[name])
    agree = gradients_agree(theirs["grads"], ours["grads"])
    print(f"  gradients within tolerance: {agree.sum()} of {agree.size} (see gradients_agree)")
    metrics = official_metrics(theirs)
    ours_metrics = dict(zip(ours["metric_names"].tolist(), ours["metrics"].tolist(), strict=True))
    names = sorted(metrics)
    for metric in sorted({n.split("/")[1] for n in names}):
        keys = [f"{c}/{metric}" for c in ours["categories"]]  # category id order
        ps.print_delta(
            f"{metric} (per category)", [metrics[k] for k in keys], [ours_metrics[k] for k in keys]
        )
        if metric == "aupro_cflow":
            ps.print_cflow_agreement(
                [metrics[k] for k in keys],
                [ours_metrics[k] for k in keys],
                ours["maps"],
                ours["masks"],
                ours["category_ids"],
            )
    if args.write_fixture:
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(state_dict(), root, ours["paths"], theirs["masks"]),
            metric_names=np.array(names),
            metrics=np.array([metrics[k] for k in names]),
            **{k: v for k, v in theirs.items() if k.startswith("prompt_learner.")},
            **sampled(theirs),
        )


if __name__ == "__main__":
    main()
