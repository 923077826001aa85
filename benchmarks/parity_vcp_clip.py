"""VCP-CLIP parity: the authors' code and zsad on the same tiny random-weight CLIP and image files.

    python benchmarks/parity_vcp_clip.py --official /tmp/VCP-CLIP --official-env /tmp/vcp-env [--write-fixture]

where /tmp/vcp-env holds what their modules import beyond zsad's environment (docs/methods.md#vcp-clip:
albumentations 1.4.24 and its albucore, stringzilla, simsimd, opencv-python-headless, tabulate, scikit-image,
setuptools<81). ``--official`` is a checkout of xiaozhen228/VCP-CLIP (its folder leads the official side's
``sys.path`` and is its working directory: their tokenizer reads ``./models/bpe_simple_vocab_16e6.txt.gz``).

The official side (a subprocess) prepares the data as their README says: ``Mvtec_dataset.make_VAND``
(``dataset/datasets200/MVTec.py``: images re-encoded as BMP by OpenCV, masks binarised and renamed, every
defect type merged into ``test/anomaly``) and ``metaSolver`` (``dataset/make_meta.py``), both with the class
list set to the generated categories. Their ``Load_CLIP`` builds the model from the parity weights (the file
reading is the one step replaced: it expects OpenAI's TorchScript archive), from ``torch.manual_seed(3)``
their ``LinearLayer``, ``Context_Prompting`` and ``Zero_Parameter`` initialise, and their initial state is
saved as ``train.py`` saves a checkpoint. Then, in float32 on the CPU:

- **their ``test.test(args)`` itself** on that checkpoint with test.sh's arguments (their
  ``MVTecDataset``, transforms, batch 32, both map kinds, ``calcuate_metric``: alpha 0.2, Gaussian sigma 8,
  per-category min-max normalisation, top-2000 image scores, sklearn metrics and their ``cal_pro_score``);
  its results are read from the arguments of ``calcuate_metric`` and of the metric functions it calls;
- one step of ``train.py``'s loop on the same files (``Makedataset`` in test mode: the training
  augmentation is random): texts, both map kinds, focal + Dice, backward and one step of their two-group
  Adam. Their prompt dropout is active there (their model is never put in eval mode before training); its
  masks are recorded and replayed on zsad's dropout.

zsad: its datamodule, ``VCPCLIP`` with the authors' initial state loaded through the official-checkpoint
reader, its evaluator. Shims on the official side, none in a computed path: ``torch.jit.load`` returns the
parity state dict, their ViT's unused attention sum (``torch.zeros([H, H]).to('cuda')``) stays on the CPU,
``cv2`` in the data conversion records which file becomes which, Pillow >= 11's refusal of a float64 mask is
undone as in parity_vand.py. The parity weights are float16-exact (OpenAI's are: their ``build_model`` rounds
every weight through float16), the model is built at 224 px and run at 240, so the position embedding is
resized as at 518 px, and it has 12 vision blocks (their ViT reads the 12th block's attention) with 64-wide
heads (their builder assumes ``width // 64`` heads).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "vcp_clip.npz"
MODEL = "zsad-parity-vcp-clip"
MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 64, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 3},
}
IMAGE_SIZE = 240  # 15 x 15 patches: the 14 x 14 position embedding is resized
FEATURE_LAYERS = [3, 6, 9, 12]
PROMPT_LEN, DEEP_PROMPT_LEN = 2, 1  # train.sh / test.sh
TOTAL_D_LAYER_LEN = MODEL_CONFIG["text_cfg"]["layers"] - 1  # their code asserts depth - 1
INIT_SEED = 3
INITIAL = "initial|"  # key prefix of the authors' initial checkpoint in the official outputs and the fixture
COMPARED = (
    "images",
    "masks",
    "text",
    "image_embedding",
    "tokens",
    "pre_maps",
    "post_maps",
    "image_scores_raw",
    "maps_raw",
)
NORMALISED = ("image_scores", "maps")  # after their per-category min-max normalisation (both sides)
STEP = ("step_text", "loss", "grads", "params_after_step")
AUG_SEED, AUG_EPOCH, AUG_RATE = 111, 2, 0.5  # the augmentation compared: a mosaic for about half the items
SAMPLE = 8  # the fixture keeps every 8th row and column of the 240 x 240 maps
TOKEN_SAMPLE = 45  # and every 45th patch token
GRADIENT_ATOL = 1e-6
ADAM_EPS = 1e-8
METRICS = ("pixel_auroc", "image_auroc", "image_ap", "pixel_ap", "aupro_cflow")


def register_model() -> None:
    ps.register_parity_model(MODEL, config=MODEL_CONFIG)


def state_dict(seed: int = ps.WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    """open_clip's initialisation after ``torch.manual_seed(seed)``, rounded to float16 values."""
    return ps.parity_state_dict(seed, MODEL, MODEL_CONFIG, float16_values=True)


def zsad_config(**overrides):
    from lightning_modules.clip.config import BackboneConfig
    from lightning_modules.vcp_clip.config import VCPCLIPConfig

    settings = {
        "backbone": BackboneConfig(
            name=MODEL, pretrained=None, image_size=IMAGE_SIZE, pos_embed_interpolation="bicubic"
        ),
        "feature_layers": list(FEATURE_LAYERS),
        "fp16_autocast": False,
        "augmentation": "none",
        "cache_features": False,
    }
    return VCPCLIPConfig(**(settings | overrides))


def initial_checkpoint(outputs: dict[str, np.ndarray]) -> dict:
    """The authors' initial checkpoint (train.py's ``save_dict`` layout) from the official outputs."""
    checkpoint: dict = {}
    for key, value in outputs.items():
        if key.startswith(INITIAL):
            section, _, name = key.removeprefix(INITIAL).partition("|")
            tensor = torch.from_numpy(np.array(value))
            if name:
                checkpoint.setdefault(section, {})[name] = tensor
            else:
                checkpoint[section] = tensor
    return checkpoint


class ReplayDropout(torch.nn.Module):
    """zsad's prompt dropout with the authors' recorded keep-masks: call ``c`` gets ``masks[c]``."""

    def __init__(self, masks: list[torch.Tensor], p: float) -> None:
        super().__init__()
        self.masks, self.p, self.calls = masks, p, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.masks[self.calls]
        self.calls += 1
        return x * mask.to(x.dtype).div_(1 - self.p)


def replay_masks(official_masks: np.ndarray, order: list[int]) -> list[torch.Tensor]:
    """The authors' masks ``[state, image (their order), call, n, w]`` as zsad's per-call ``[2 * B, n, w]``
    (sequences state-major, images in zsad's order)."""
    masks = torch.from_numpy(official_masks)[:, order]  # [2, B, calls, n, w]
    return [masks[:, :, c].reshape(-1, *masks.shape[-2:]) for c in range(masks.shape[2])]


def min_max_per_category(values: np.ndarray, category_ids: np.ndarray) -> np.ndarray:
    """Their ``normalize`` of each category's maps or scores (an increasing affine map: no metric changes)."""
    out = np.empty_like(values, dtype=np.float64)
    for c in np.unique(category_ids):
        v = values[category_ids == c].astype(np.float64)
        out[category_ids == c] = (v - v.min()) / (v.max() - v.min())
    return out


def evaluate(categories, category_ids, scores, labels, maps, masks) -> dict[str, float]:
    """zsad's evaluator on the given scores and maps: the METRICS of each category."""
    metrics = ps.evaluator_metrics(categories, category_ids, scores, labels, maps, masks)
    return {k: v for k, v in metrics.items() if k.split("/")[1] in METRICS}


def zsad_augmentations(root: Path, preprocessing) -> dict[str, np.ndarray]:
    """zsad's training split with VCP-CLIP's augmentation (albumentations 1.4.24's transforms, which the
    official side runs), epoch AUG_EPOCH, in index order."""
    from datamodules import AnomalyDataModule, DataConfig
    from datamodules.augment import TrainAugmentation
    from datamodules.mosaic import Mosaic

    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0),
        IMAGE_SIZE,
        preprocessing,
        seed=AUG_SEED,
        augmentation=TrainAugmentation("vcp_clip", Mosaic(AUG_RATE), albumentations="1.4.24"),
    )
    dataset = data.train_dataset()
    items = [dataset[(AUG_EPOCH, i)] for i in range(len(dataset))]
    return {
        "aug_paths": np.array([str(Path(item["image_path"]).relative_to(root)) for item in items]),
        "aug_images": np.stack([item["image"].numpy() for item in items]),
        "aug_masks": np.stack([(item["mask"] > 0.5).numpy() for item in items]),
    }


def zsad_outputs(
    root: Path, checkpoint: dict, dropout_masks: np.ndarray, their_paths: list[str], cfg=None
) -> dict:
    """zsad on the files under ``root`` from the authors' initial ``checkpoint``; the training step replays
    their dropout ``masks`` (their image order ``their_paths``)."""
    import open_clip

    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.registry import get_method
    from lightning_modules.vcp_clip.model import VCPCLIP
    from lightning_modules.vcp_clip.module import VCPCLIPModule
    from lightning_modules.vcp_clip.official_checkpoint import zsad_state_dict

    register_model()
    cfg = cfg or zsad_config()
    clip = open_clip.create_model(MODEL, pretrained=None)
    clip.load_state_dict(state_dict())
    model = VCPCLIP(cfg, clip, open_clip.get_tokenizer(MODEL))
    module = VCPCLIPModule(cfg, model=model)
    module.load_state_dict(zsad_state_dict(module, checkpoint, "parity"), strict=False)
    data = AnomalyDataModule(
        DataConfig(name="synthetic", root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        get_method("vcp_clip").preprocessing(cfg, "synthetic"),
    )
    batch = next(iter(data.test_dataloader()))
    images, masks, labels, ids = batch["image"], batch["mask"], batch["label"], batch["category_id"]
    paths = [str(Path(p).relative_to(root)) for p in batch["image_path"]]
    size = tuple(masks.shape[-2:])
    module.eval()
    with torch.no_grad():
        features = model.encode_images(images)
        text = model.encode_texts(features["image_embedding"])
        output = model.scores(features, size)
        scores, maps = model.image_scores(output), model.anomaly_map(output)
    result = {
        "paths": np.array(paths),
        "category_ids": ids.numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": masks.numpy(),
        "text": text.numpy(),
        "image_embedding": features["image_embedding"].numpy(),
        "tokens": np.stack([features[f"tokens_{layer}"].numpy() for layer in FEATURE_LAYERS]),
        "pre_maps": output.pre_map().numpy(),
        "post_maps": output.post_map().numpy(),
        "image_scores_raw": scores.numpy(),
        "maps_raw": maps.numpy(),
        "image_scores": min_max_per_category(scores.numpy(), ids.numpy()),
        "maps": min_max_per_category(maps.numpy(), ids.numpy()),
    }
    metrics = evaluate(
        data.categories, ids.numpy(), scores.numpy(), labels.numpy(), maps.numpy(), masks.numpy()
    )
    result |= {
        "metric_names": np.array(sorted(metrics)),
        "metrics": np.array([metrics[k] for k in sorted(metrics)]),
    }

    # train.py's step: train mode (the prompt dropout active, replaying the authors' masks)
    module.train()
    order = [their_paths.index(p) for p in paths]
    model.deep_prompts.dropout = ReplayDropout(replay_masks(dropout_masks, order), cfg.prompt_dropout)
    optimizer = module.configure_optimizers()
    step_text = model.encode_texts(features["image_embedding"])
    model.deep_prompts.dropout.calls = 0
    output = model.scores(features, size)
    loss = model.loss(output, masks)
    optimizer.zero_grad()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in official_order(model)])
    optimizer.step()
    return (
        result
        | zsad_augmentations(root, get_method("vcp_clip").preprocessing(cfg, "synthetic"))
        | {
            "step_text": step_text.detach().numpy(),
            "loss": loss.detach().numpy(),
            "grads": grads.numpy(),
            "params_after_step": torch.cat([p.detach().flatten() for p in official_order(model)]).numpy(),
            "learning_rates": learning_rates(model, cfg),
        }
    )


def step_agrees(official_grads, official_params, params, learning_rates) -> np.ndarray:
    """Per element: the parameters after one Adam step within ``1e-7 + lr * GRADIENT_ATOL / (|g| + eps)``.

    Adam's first update is ``lr * g / (|g| + eps)``: a gradient difference ``dg`` moves it by about
    ``lr * dg / (|g| + eps)``, nothing where ``|g|`` is large but up to ``lr * dg / eps`` where the gradient
    is near eps (1e-8), which the random-weight CLIP's flat loss gives some elements (as in parity_anovl.py).
    """
    sensitivity = learning_rates * GRADIENT_ATOL / (np.abs(official_grads.astype(np.float64)) + ADAM_EPS)
    return np.abs(official_params.astype(np.float64) - params.astype(np.float64)) <= 1e-7 + sensitivity


def learning_rates(model, cfg) -> np.ndarray:
    """Each element's learning rate in :func:`official_order`: the temperatures' or everyone else's."""
    temperatures = {id(p) for p in model.temperature_parameters()}
    return np.concatenate(
        [
            np.full(p.numel(), cfg.temperature_lr if id(p) in temperatures else cfg.lr)
            for p in official_order(model)
        ]
    )


def official_order(model) -> list[torch.nn.Parameter]:
    """zsad's trainable parameters in the order :func:`official_parameters` lists the authors'."""
    heads = [p for head in model.heads for p in (head.weight, head.bias)]
    pre = [model.pre_vcp.query, model.pre_vcp.conv.weight, model.pre_vcp.conv.bias, model.pre_log_scale]
    post = [
        p for layer in ("query", "key", "value", "out") for p in getattr(model.post_vcp, layer).parameters()
    ]
    prompts = model.deep_prompts
    text = [
        prompts.shallow,
        prompts.deep,
        prompts.proj.weight,
        prompts.proj.bias,
        prompts.norm.weight,
        prompts.norm.bias,
    ]
    return [*heads, *pre, *post, model.post_log_scale, *text]


# --- the official side (a subprocess) -----------------------------------------------------------------


def official_parameters(trainable_layer, new_lan_embed, zero_try, model) -> list[torch.nn.Parameter]:
    post = [getattr(zero_try, n) for n in ("q_proj_pre", "k_proj_pre_1", "v_proj_pre_1", "proj_post_t")]
    return [
        *trainable_layer.parameters(),
        new_lan_embed.prompt_query,
        new_lan_embed.prompt_linear1.fc.weight,
        new_lan_embed.prompt_linear1.fc.bias,
        new_lan_embed.prompt_temp,
        *[p for layer in post for p in layer.parameters()],
        zero_try.prompt_temp_l1,
        model.prompt_embeddings,
        model.deep_prompt_embeddings,
        model.prompt_proj.weight,
        model.prompt_proj.bias,
        model.prompt_norm.weight,
        model.prompt_norm.bias,
    ]


def official_setup(official: Path, root: Path, weights: Path) -> types.SimpleNamespace:
    """The official side's preparation: their modules imported (with the shims), the files converted and
    indexed as their README says, their model and trainable modules built from ``INIT_SEED``, the initial
    state saved as train.py saves a checkpoint, and test.sh's arguments for their ``test.test``."""
    work = Path(tempfile.mkdtemp(prefix="zsad-vcp-official-"))
    sys.path.insert(0, str(official))  # before benchmarks/
    os.chdir(official)  # their tokenizer reads ./models/bpe_simple_vocab_16e6.txt.gz
    weights_state = torch.load(weights, weights_only=True)
    torch.jit.load = lambda *a, **k: types.SimpleNamespace(
        eval=lambda: types.SimpleNamespace(state_dict=lambda: dict(weights_state))
    )

    import models.transformer as their_transformer
    import test as their_test
    import train as their_train
    import utils.dataset as their_dataset
    from dataset.datasets200 import MVTec as their_conversion
    from dataset.make_meta import metaSolver
    from models.model_CLIP import Load_CLIP
    from models.post_vcp import Zero_Parameter
    from models.pre_vcp import Context_Prompting

    their_transformer.torch = ps.CpuZeros()
    their_dataset.Image.fromarray = ps.old_pillow_fromarray(their_dataset.Image.fromarray)

    # their data preparation (README: make_dataset_new.py, then make_meta.py)
    data_root = work / "mvisa" / "data"
    cv2_recorder = ps.RecordingCv2(their_conversion.cv2)
    their_conversion.cv2 = cv2_recorder
    converter = their_conversion.Mvtec_dataset(str(root))
    converter.dataset_name = list(ps.CATEGORIES)
    converter.make_VAND(binary=True, to_255=True, des_path_root=str(data_root / "mvtec"), id=0)
    solver = metaSolver(
        root=str(data_root / "mvtec"), meta_path=str(data_root / "meta_mvtec.json"), datasets="mvtec"
    )
    solver.CLSNAMES = list(ps.CATEGORIES)
    solver.run()

    def original(path: str) -> str:
        return str(Path(cv2_recorder.sources[os.path.abspath(path)]).relative_to(root))

    # their model and trainable modules, seeded; the initial state saved as train.py saves checkpoints
    config_path = work / f"{MODEL}.json"
    config_path.write_text(json.dumps(MODEL_CONFIG))
    torch.manual_seed(INIT_SEED)
    model, _, preprocess_test = Load_CLIP(
        IMAGE_SIZE,
        str(weights),
        device="cpu",
        deep_prompt_len=DEEP_PROMPT_LEN,
        total_d_layer_len=TOTAL_D_LAYER_LEN,
    )
    model_optim = their_train._freeze_stages(model, "prompt")
    width, embed_dim = MODEL_CONFIG["vision_cfg"]["width"], MODEL_CONFIG["embed_dim"]
    trainable_layer = their_train.LinearLayer(width, embed_dim, len(FEATURE_LAYERS), "ViT")
    new_lan_embed = Context_Prompting(MODEL_CONFIG, cla_len=PROMPT_LEN)
    zero_try = Zero_Parameter(dim_v=width, dim_t=MODEL_CONFIG["text_cfg"]["width"], dim_out=width)
    save_dict = {
        "trainable_linearlayer": trainable_layer.state_dict(),
        "New_Lan_Embed": new_lan_embed.state_dict(),
        "Zero_try": zero_try.state_dict(),
    }
    save_dict.update(model_optim)
    checkpoint_path = work / "initial.pth"
    torch.save(save_dict, checkpoint_path)
    initial = {}
    for section, entries in save_dict.items():
        if isinstance(entries, dict):
            initial |= {f"{INITIAL}{section}|{k}": v.detach().numpy().copy() for k, v in entries.items()}
        else:
            initial[f"{INITIAL}{section}"] = entries.detach().numpy().copy()
    args = types.SimpleNamespace(
        data_path=str(data_root),
        save_path=str(work / "results"),
        checkpoint_path=str(checkpoint_path),
        config_path=str(config_path),
        pretrained_path=str(weights),
        dataset="mvtec",
        model="ViT-parity",
        pretrained="openai",
        features_list=list(FEATURE_LAYERS),
        image_size=IMAGE_SIZE,
        seed=333,
        prompt_len=PROMPT_LEN,
        deep_prompt_len=DEEP_PROMPT_LEN,
        device_id=0,
        use_global=True,
        total_d_layer_len=TOTAL_D_LAYER_LEN,
    )
    their_test.Load_CLIP = lambda *a, **k: (model, None, preprocess_test)
    return types.SimpleNamespace(**locals())


def official_optimizer(setup: types.SimpleNamespace, model, model_optim) -> torch.optim.Optimizer:
    """train.py's Adam: two learning rates (train.sh's 4e-5, and 0.01 for the temperatures)."""
    new_lan_embed, zero_try, trainable_layer = setup.new_lan_embed, setup.zero_try, setup.trainable_layer
    parameter_prompt_list = [m for n, m in new_lan_embed.named_parameters() if n != "prompt_temp"]
    group1 = [m for n, m in zero_try.named_parameters() if n not in ["prompt_temp_l1"]]
    group2 = [zero_try.prompt_temp_l1]
    lr_group1 = list(trainable_layer.parameters()) + parameter_prompt_list + list(model_optim.values())
    return torch.optim.Adam(
        [
            {"params": group1 + lr_group1, "lr": 4e-5},
            {"params": group2 + [new_lan_embed.prompt_temp], "lr": 0.01},
        ],
        lr=4e-5,
        betas=(0.5, 0.999),
    )


def official_step(
    setup: types.SimpleNamespace, model, optimizer, prompt_pre, patch_tokens, image_features, items
):
    """The body of train.py's loop after the frozen encoder, up to ``loss.backward()``: ``(loss, texts)``."""
    from torch.nn import functional as F
    from utils.loss import BinaryDiceLoss, FocalLoss

    new_lan_embed, zero_try, trainable_layer = setup.new_lan_embed, setup.zero_try, setup.trainable_layer
    class_token = new_lan_embed.before_extract_feat(patch_tokens, image_features, use_global=True)
    text_embeddings = prompt_pre.forward_ensemble(model, class_token, "cpu")
    step_text = text_embeddings.detach().clone()
    text_embeddings = text_embeddings.permute(0, 2, 1)
    anomaly_maps_new = []
    for layer in range(len(patch_tokens)):
        dense_feature = patch_tokens[layer][:, 1:, :].clone()
        dense_feature = dense_feature / dense_feature.norm(dim=-1, keepdim=True)
        F_s_a, F_t_a = zero_try(text_embeddings.permute(0, 2, 1), dense_feature)
        anomaly_map_new = zero_try.prompt_temp_l1.exp() * dense_feature @ F_t_a.permute(0, 2, 1)
        B, L, C = anomaly_map_new.shape
        H = int(np.sqrt(L))
        anomaly_map_new = F.interpolate(
            anomaly_map_new.permute(0, 2, 1).view(B, 2, H, H),
            size=IMAGE_SIZE,
            mode="bilinear",
            align_corners=True,
        )
        anomaly_maps_new.append(torch.softmax(anomaly_map_new, dim=1))
    patch_tokens_linear = trainable_layer(patch_tokens)
    anomaly_maps_raw = []
    for layer in range(len(patch_tokens_linear)):
        dense_feature = patch_tokens_linear[layer].clone()
        dense_feature = dense_feature / dense_feature.norm(dim=-1, keepdim=True)
        anomaly_map_raw = new_lan_embed.prompt_temp.exp() * dense_feature @ text_embeddings
        B, L, C = anomaly_map_raw.shape
        H = int(np.sqrt(L))
        anomaly_map_raw = F.interpolate(
            anomaly_map_raw.permute(0, 2, 1).view(B, 2, H, H),
            size=IMAGE_SIZE,
            mode="bilinear",
            align_corners=True,
        )
        anomaly_maps_raw.append(torch.softmax(anomaly_map_raw, dim=1))
    gt = items["img_mask"].squeeze()
    gt[gt > 0.5], gt[gt < 0.5] = 1, 0
    loss_focal, loss_dice = FocalLoss(), BinaryDiceLoss()
    loss_new = 0
    for num in range(len(anomaly_maps_new)):
        loss_new += loss_focal(anomaly_maps_new[num], gt)
        loss_new += loss_dice(anomaly_maps_new[num][:, 1, :, :], gt)
    loss_base = 0
    for num in range(len(anomaly_maps_raw)):
        loss_base += loss_focal(anomaly_maps_raw[num], gt)
        loss_base += loss_dice(anomaly_maps_raw[num][:, 1, :, :], gt)
    loss = loss_new + loss_base
    optimizer.zero_grad()
    loss.backward()
    return loss, step_text


def official_augmentations(setup: types.SimpleNamespace, root: Path) -> dict[str, np.ndarray]:
    """Their ``MVTecDataset`` in mode "train" (``aug_rate`` AUG_RATE: mosaic, then their albumentations
    pipeline), each item drawn with zsad's seed of that sample: ``random.seed`` for their ``random.random()``
    and ``random.choice``, ``seed_pipeline(img_trans, seed)`` for the pipeline (one Python and one NumPy
    generator shared by its transforms, albumentations 1.4.24's ``set_random_state``). Shim: their ``os.listdir`` is sorted (its order is the filesystem's)."""
    import random

    from datamodules.augment import seed_pipeline
    from datamodules.index import build_index
    from datamodules.resumable import derived_seed

    their_dataset = setup.their_dataset
    their_dataset.os = types.SimpleNamespace(path=os.path, listdir=lambda path: sorted(os.listdir(path)))
    maker = their_dataset.Makedataset(
        train_data_path=str(setup.data_root),
        preprocess_test=setup.preprocess_test,
        mode="train",
        train_mode="zero",
        image_size=IMAGE_SIZE,
        aug=AUG_RATE,
    )
    data = their_dataset.MVTecDataset(
        root=str(setup.data_root),
        transform=setup.preprocess_test,
        target_transform=maker.target_transform,
        aug_rate=AUG_RATE,
        mode="train",
        train_mode="zero",
        product_list=list(ps.CATEGORIES),
        dataset="mvtec",
    )
    positions = {
        str(r.image_path.relative_to(root)): i
        for i, r in enumerate(build_index("synthetic", root).select(split="test").records)
    }
    rows = {"aug_paths": [], "aug_images": [], "aug_masks": []}
    for k in range(len(data)):
        path = setup.original(os.path.join(str(setup.data_root), data.data_all[k]["img_path"]))
        seed = derived_seed(AUG_SEED, AUG_EPOCH, positions[path], "augment")
        random.seed(seed)
        seed_pipeline(data.img_trans, seed)
        item = data[k]
        rows["aug_paths"].append(path)
        rows["aug_images"].append(item["img"].numpy())
        rows["aug_masks"].append((item["img_mask"][0] > 0.5).numpy())
    import cv2

    rows = {k: np.stack(v) if k != "aug_paths" else np.array(v) for k, v in rows.items()}
    return rows | {"aug_opencv": np.array(cv2.__version__)}  # the images depend on OpenCV's version


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    setup = official_setup(official, root, weights)
    from models.model_CLIP import Load_CLIP, tokenize
    from models.prompt_ensemble import Prompt_Ensemble

    their_test, their_train, their_dataset = setup.their_test, setup.their_train, setup.their_dataset
    original, data_root, checkpoint_path = setup.original, setup.data_root, setup.checkpoint_path
    trainable_layer, new_lan_embed, zero_try = setup.trainable_layer, setup.new_lan_embed, setup.zero_try
    save_dict, initial, args = setup.save_dict, setup.initial, setup.args

    # test.py itself, with test.sh's arguments
    captured = {}
    calculate = their_test.calcuate_metric

    def capture(results, *args, **kwargs):
        captured["results"] = results
        return calculate(results, *args, **kwargs)

    their_test.calcuate_metric = capture
    recorders = {
        name: ps.Recorder(getattr(their_test, name))
        for name in ("roc_auc_score", "average_precision_score", "cal_pro_score")
    }
    for name, recorder in recorders.items():
        setattr(their_test, name, recorder)
    their_test.test(args)
    results = captured["results"]
    paths = [original(p) for p in results["path"]]
    cls_names = np.array(results["cls_names"])
    obj_list = list(dict.fromkeys(results["cls_names"]))
    roc, ap, pro = (recorders[n].calls for n in ("roc_auc_score", "average_precision_score", "cal_pro_score"))
    rows, maps, scores = [], np.zeros((len(paths), IMAGE_SIZE, IMAGE_SIZE)), np.zeros(len(paths))
    for k, obj in enumerate(obj_list):  # per object: roc(px), roc(sp); ap(sp), ap(px); pro
        keep = cls_names == obj
        maps[keep] = roc[2 * k][0][1].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        scores[keep] = roc[2 * k + 1][0][1]
        rows.append([roc[2 * k][1], roc[2 * k + 1][1], ap[2 * k][1], ap[2 * k + 1][1], pro[k][1]])
    # calcuate_metric's expressions before its per-object min-max normalisation (theirs, verbatim)
    from scipy.ndimage import gaussian_filter

    pr_px_1 = np.concatenate(results["anomaly_map_raw"])
    pr_px_2 = np.concatenate(results["anomaly_map_new"])
    can_k, alpha = -2000, 0.2
    pr_sp_1 = np.partition(pr_px_1.reshape(pr_px_1.shape[0], -1), kth=can_k)[:, can_k:]
    pr_sp_2 = np.partition(pr_px_2.reshape(pr_px_2.shape[0], -1), kth=can_k)[:, can_k:]
    result = {
        "image_scores_raw": np.mean(pr_sp_1, axis=1) + np.mean(pr_sp_2, axis=1),
        "maps_raw": gaussian_filter(alpha * pr_px_1 + (1 - alpha) * pr_px_2, sigma=8, axes=(1, 2)),
        "paths": np.array(paths),
        "cls": cls_names,
        "labels": np.array([int(a) for a in results["gt_sp"]]),
        "masks": np.concatenate(results["imgs_masks"]),
        "pre_maps": np.concatenate(results["anomaly_map_raw"]),
        "post_maps": np.concatenate(results["anomaly_map_new"]),
        "image_scores": scores,
        "maps": maps,
        "metric_objects": np.array(obj_list),
        "official_metrics": np.asarray(rows),
    }

    # their metric functions on every SAMPLE-th row and column of their maps: what the fixture can keep,
    # for the CI test to check zsad's metric definitions on official maps
    rows = []
    for obj in obj_list:
        keep = cls_names == obj
        gt_px, pr_px = result["masks"][keep][:, ::SAMPLE, ::SAMPLE], maps[keep][:, ::SAMPLE, ::SAMPLE]
        gt_sp, pr_sp = result["labels"][keep], scores[keep]
        rows.append(
            [
                their_test.roc_auc_score.function(gt_px.ravel(), pr_px.ravel()),
                their_test.roc_auc_score.function(gt_sp, pr_sp),
                their_test.average_precision_score.function(gt_sp, pr_sp),
                their_test.average_precision_score.function(gt_px.ravel(), pr_px.ravel()),
                their_test.cal_pro_score.function(gt_px, pr_px),
            ]
        )
    result["sampled_metrics"] = np.asarray(rows)

    # one step of train.py's loop (their model in train mode: prompt dropout on, masks recorded)
    torch.manual_seed(INIT_SEED)
    model, _, preprocess_test = Load_CLIP(
        IMAGE_SIZE,
        str(weights),
        device="cpu",
        deep_prompt_len=DEEP_PROMPT_LEN,
        total_d_layer_len=TOTAL_D_LAYER_LEN,
    )
    their_test._load_stages(model, torch.load(checkpoint_path, weights_only=True), "prompt")
    model_optim = their_train._freeze_stages(model, "prompt")
    for part, key in (
        (trainable_layer, "trainable_linearlayer"),
        (new_lan_embed, "New_Lan_Embed"),
        (zero_try, "Zero_try"),
    ):
        part.load_state_dict(save_dict[key])
        part.train()
    prompt_pre = Prompt_Ensemble(PROMPT_LEN, tokenize)
    maker = their_dataset.Makedataset(
        train_data_path=str(data_root),
        preprocess_test=preprocess_test,
        mode="test",
        train_mode="zero",
        image_size=IMAGE_SIZE,
        aug=-1,
    )
    loader, _ = maker.mask_dataset(
        name="mvtec", product_list=list(ps.CATEGORIES), batchsize=len(paths), shuf=False
    )
    items = next(iter(loader))
    step_paths = [original(p) for p in items["img_path"]]
    image = items["img"]
    with torch.no_grad():
        image_features, patch_tokens = model.encode_image(image, FEATURE_LAYERS)
        model.eval()  # test.py's texts (no dropout), from the initial state
        class_token = new_lan_embed.before_extract_feat(patch_tokens, image_features.clone(), use_global=True)
        eval_text = prompt_pre.forward_ensemble(model, class_token, "cpu")
        model.train()
    recorded = []
    model.prompt_dropout.register_forward_hook(lambda _m, _x, out: recorded.append((out != 0).numpy()))
    optimizer = official_optimizer(setup, model, model_optim)
    loss, step_text = official_step(setup, model, optimizer, prompt_pre, patch_tokens, image_features, items)
    parameters = official_parameters(trainable_layer, new_lan_embed, zero_try, model)
    grads = torch.cat([p.grad.flatten() for p in parameters])
    optimizer.step()
    calls = (
        1 + TOTAL_D_LAYER_LEN
    )  # per encode_text call and image: the inserted tokens, then each later block
    masks = np.stack(recorded).reshape(2, len(step_paths), calls, DEEP_PROMPT_LEN, -1)
    step_order = [step_paths.index(p) for p in paths]  # test.py's order, as the other entries
    return (
        result
        | official_augmentations(setup, root)
        | initial
        | {
            "images": image.numpy()[step_order],
            "image_embedding": image_features.numpy()[step_order],
            "tokens": torch.stack([t[:, 1:] for t in patch_tokens]).numpy()[:, step_order],
            "text": eval_text.numpy()[step_order],
            "step_text": step_text.numpy()[step_order],
            "dropout_masks": masks[:, step_order],
            "loss": loss.detach().numpy(),
            "grads": grads.numpy(),
            "params_after_step": torch.cat([p.detach().flatten() for p in parameters]).numpy(),
        }
    )


def sampled(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the fixture keeps (full maps and tokens are megabytes): texts, embeddings, scores, every 45th
    patch token (TOKEN_SAMPLE), every SAMPLE-th row and column of the maps and masks, the loss, gradients and parameters
    after the step, the labels and categories (those that ``outputs`` has: zsad's have no official metrics)."""
    kept = (
        "text",
        "step_text",
        "image_embedding",
        "image_scores",
        "image_scores_raw",
        "loss",
        "grads",
        "params_after_step",
        "labels",
        "cls",
        "sampled_metrics",
        "metric_objects",
    )
    every = (slice(None), slice(None, None, SAMPLE), slice(None, None, SAMPLE))
    return {k: outputs[k] for k in kept if k in outputs} | {
        "tokens_sampled": outputs["tokens"][:, :, ::TOKEN_SAMPLE],
        "masks_sampled": outputs["masks"][every] > 0.5,
        "aug_images_sampled": outputs["aug_images"][:, :, ::SAMPLE, ::SAMPLE],
        "aug_masks_sum": outputs["aug_masks"].reshape(len(outputs["aug_masks"]), -1).sum(1),
        **{
            f"{k}_sampled": outputs[k][every].astype(np.float32)
            for k in ("pre_maps", "post_maps", "maps", "maps_raw")
        },
    }


def official_metrics(theirs: dict[str, np.ndarray]) -> dict[str, float]:
    """Their per-object metrics (sklearn, their ``cal_pro_score``) by zsad's names."""
    return {
        f"{obj}/{name}": float(theirs["official_metrics"][k][m])
        for k, obj in enumerate(theirs["metric_objects"].tolist())
        for m, name in enumerate(METRICS)
    }


def sampled_official_metrics(theirs: dict[str, np.ndarray]) -> dict[str, float]:
    """Their metric functions on the SAMPLE-th rows and columns of their maps (``sampled_metrics``)."""
    return {
        f"{obj}/{name}": float(theirs["sampled_metrics"][k][m])
        for k, obj in enumerate(theirs["metric_objects"].tolist())
        for m, name in enumerate(METRICS)
    }


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "checkout of xiaozhen228/VCP-CLIP", "PYTHONPATH entries the official side needs"
    )
    if ps.serve_official_side(args, official_outputs):
        return
    work = Path(tempfile.mkdtemp(prefix="zsad-parity-vcp-clip-"))
    root = ps.write_parity_images(work / "mvtec")
    theirs = ps.run_official_side(__file__, args.official, root, state_dict(), work, (args.official_env,))
    ours = zsad_outputs(root, initial_checkpoint(theirs), theirs["dropout_masks"], theirs["paths"].tolist())
    print(f"VCP-CLIP: official ({args.official}) vs zsad, {len(ours['paths'])} images, one training step")
    if not np.array_equal(np.sort(theirs["paths"]), np.sort(ours["paths"])):
        raise SystemExit("the two sides read different files")
    order = [list(theirs["paths"]).index(p) for p in ours["paths"]]  # zsad's order
    deltas = {}
    for name in ("cls", "labels"):
        theirs[name] = theirs[name][order]
    for name in (*COMPARED, *NORMALISED):
        a = theirs[name][:, order] if name == "tokens" else theirs[name][order]
        theirs[name] = a
        deltas[name] = ps.print_delta(name, a, ours[name])
    for name in ("step_text",):
        theirs[name] = theirs[name][order]
    for name in STEP:
        deltas[name] = ps.print_delta(name, theirs[name], ours[name])
    aug_order = [list(theirs["aug_paths"]).index(p) for p in ours["aug_paths"]]
    for name in ("aug_paths", "aug_images", "aug_masks"):
        theirs[name] = theirs[name][aug_order]
    for name in ("aug_images", "aug_masks"):
        deltas[name] = ps.print_delta(f"{name} (augmented, epoch {AUG_EPOCH})", theirs[name], ours[name])
    agree = step_agrees(
        theirs["grads"], theirs["params_after_step"], ours["params_after_step"], ours["learning_rates"]
    )
    print(
        f"  parameters after the step within Adam's sensitivity: {agree.sum()} of {agree.size} (step_agrees)"
    )
    steep = np.abs(theirs["grads"]) > 1e-6
    deltas["params_after_step_steep"] = ps.print_delta(
        "params after step (|g| > 1e-6)", theirs["params_after_step"][steep], ours["params_after_step"][steep]
    )
    metrics = official_metrics(theirs)
    ids = np.array([list(ps.CATEGORIES).index(c) for c in theirs["cls"]])
    on_theirs = evaluate(
        ps.CATEGORIES, ids, theirs["image_scores"], theirs["labels"], theirs["maps"], theirs["masks"]
    )
    for name in METRICS:
        keys = sorted(k for k in metrics if k.endswith(f"/{name}"))
        deltas[f"{name}_on_official_maps"] = ps.print_delta(
            f"{name} (zsad on their maps)", [metrics[k] for k in keys], [on_theirs[k] for k in keys]
        )
    sampled_theirs = sampled_official_metrics(theirs)
    sampled_ours = evaluate(
        ps.CATEGORIES,
        ids,
        theirs["image_scores"],
        theirs["labels"],
        theirs["maps"][:, ::SAMPLE, ::SAMPLE],
        theirs["masks"][:, ::SAMPLE, ::SAMPLE],
    )
    keys = sorted(sampled_theirs)
    deltas["metrics_on_sampled_official_maps"] = ps.print_delta(
        "metrics, zsad on their sampled maps",
        [sampled_theirs[k] for k in keys],
        [sampled_ours[k] for k in keys],
    )
    ours_metrics = dict(zip(ours["metric_names"].tolist(), ours["metrics"].tolist(), strict=True))
    for name in METRICS:
        keys = sorted(k for k in metrics if k.endswith(f"/{name}"))
        deltas[name] = ps.print_delta(
            f"{name} (zsad's maps)", [metrics[k] for k in keys], [ours_metrics[k] for k in keys]
        )
    if args.write_fixture:
        names = sorted(metrics)
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(state_dict(), root, ours["paths"], theirs["masks"]),
            metric_names=np.array(names),
            metrics=np.array([metrics[k] for k in names]),
            dropout_masks=theirs["dropout_masks"][:, order],
            aug_opencv=theirs["aug_opencv"],
            **{k: v for k, v in theirs.items() if k.startswith(INITIAL)},
            **sampled(theirs),
        )
    print(json.dumps({"method": "vcp_clip", "max_abs_delta": deltas}))


if __name__ == "__main__":
    main()
