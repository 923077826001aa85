"""Bayes-PFL parity: the authors' code and zsad on the same tiny random-weight CLIP, image files and draws.

    python benchmarks/parity_bayes_pfl.py --official /tmp/Bayes-PFL --official-env /tmp/bpfl-env [--write-fixture]

where /tmp/bpfl-env holds what their modules import beyond zsad's environment (docs/methods.md#bayes-pfl:
albumentations 1.3.1 with qudida, scikit-image, opencv-python-headless, pandas, tabulate, transformers 4.36.2,
setuptools<81, ...). ``--official`` is a checkout of xiaozhen228/Bayes-PFL (its folder leads the official
side's ``sys.path`` and is its working directory: their tokenizer reads ``./models/bpe_simple_vocab_16e6.txt.gz``).

The official side (a subprocess) prepares the data as their README says: ``Mvtec_dataset.make_VAND``
(``dataset/datasets/MVTec.py``: images re-encoded as BMP by OpenCV, masks binarised and renamed, every defect
type merged into ``test/anomaly``) and ``metaSolver`` (``dataset/make_meta.py``), both with the class list set
to the generated categories. Their ``Load_CLIP`` builds the CLIP from the parity weights, from
``torch.manual_seed(3)`` their ``Context_Prompting`` initialises, and its state is saved as train.py saves
a checkpoint (``{"MyModel": state_dict}``; zsad loads it through its official-checkpoint reader). Then, in
float32 on the CPU:

- **their ``test.test(args)`` itself** on that checkpoint with test.sh's arguments (``MyDataset`` in test mode,
  batch 1, ``forward_ensemble`` + ``Context_Prompting.forward`` in stage 2, ``calcuate_metric_pixel``: the
  Gaussian sigma 8, the per-category min-max image-score rule with alpha 0.5 and top-2000, sklearn metrics);
  its Monte-Carlo draws (``torch.randn_like`` in their ``models/PFL.py``) are zsad's, keyed by image;
- two steps of train.py's loop on the first batch of their training loader (test mode: the augmentation is
  compared on its own): forward in train mode, the prompt drawn with ``torch.randint``, class + focal + Dice +
  KL + orthogonal loss, backward, their stage-1 Adam groups with transformers' warm-up cosine schedule. Both
  sides start each step from the same torch seed and draw in the same order, so they draw the same numbers.

Shims on the official side, none in a computed path: ``torch.jit.load`` returns the parity state dict, their
ViT's unused attention sum (``torch.zeros([H, H]).to('cuda')``) and their ``.cuda()`` calls stay on the CPU,
``imgaug`` (imported, its augmenters built but used only by the DRAEM synthesis their code switches off) is a
stub whose augmenters refuse to run, Pillow >= 11's refusal of a float64 mask is undone as in parity_vand.py.
The parity weights are float16-exact (OpenAI's are: their ``build_model`` rounds every weight through
float16), the model is built at 224 px and run at 240 (the position embedding is resized as at 518 px), with
12 vision blocks (their ViT reads the 12th block's attention) and 64-wide heads (their builder assumes
``width // 64`` heads).
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

FIXTURE = ps.FIXTURES / "bayes_pfl.npz"
MODEL = "zsad-parity-bayes-pfl"
MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 64, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 3},
}
IMAGE_SIZE = 240  # 15 x 15 patches: the 14 x 14 position embedding is resized
FEATURE_LAYERS = [3, 6, 9, 12]
PROMPT_NUM, CONTEXT_LEN, STATE_LEN = 3, 5, 5  # train.sh / test.sh
NUM_FLOWS = 2  # train.sh: 10; 2 keeps the fixture small (the flow loop runs either way)
TEST_SAMPLES = 2  # test.sh's --sample_num is 10; 2 keeps the run short (every code path runs)
SEED = 333  # test.sh --seed
DATASET = "synthetic"  # zsad's name of the generated MVTec-layout data: part of each image's sampling key
INIT_SEED = 3
STEP_SEED = 11
TRAIN_BATCH = 6
TOTAL_STEPS = 20  # their len(loader) * epochs: a warm-up of int(0.1 * 20) = 2 steps, so step 1 has lr 0
INITIAL = "initial|"
# Training augmentation under forced draws (both sides): per plan, each transform applied or not (None) with
# the given parameters; "noise" is the variance of GaussNoise, its standard normal array comes from the plan's
# index; "oneof" picks Blur (ksize 3), ColorJitter (brightness, contrast, saturation, hue, order) or
# GaussianBlur (ksize). Plan i augments the i-th image of AUG_IMAGES (relative to the raw data root).
AUG_PLANS = (
    {"rotate": 17.3, "rot90": 1, "rbc": (1.12, -0.08), "noise": 31.0, "oneof": ("blur",)},
    {
        "rotate": -28.9,
        "rot90": None,
        "rbc": None,
        "noise": None,
        "oneof": ("jitter", 1.15, 0.86, 1.18, 0.13, [2, 0, 3, 1]),
    },
    {"rotate": None, "rot90": 3, "rbc": (0.83, 0.19), "noise": 12.5, "oneof": ("gauss", 5)},
    {
        "rotate": 4.2,
        "rot90": 2,
        "rbc": None,
        "noise": 48.0,
        "oneof": ("jitter", 0.82, 1.19, 0.81, -0.19, [3, 1, 0, 2]),
    },
    {"rotate": None, "rot90": None, "rbc": (1.0, 0.0), "noise": None, "oneof": ("gauss", 7)},
)
AUG_IMAGES = (
    "disc/test/hole/000.png",
    "disc/test/good/000.png",
    "weave/test/scratch/000.png",
    "weave/test/stain/000.png",
    "weave/test/good/001.png",
)
MOSAIC_TILES = (
    "disc/test/hole/000.png",
    "disc/test/scratch/000.png",
    "disc/test/scratch/000.png",
    "disc/test/stain/000.png",
)
SAMPLE = 8  # the fixture keeps every 8th row and column of the 240 x 240 maps
IMAGE_SAMPLE, TOKEN_SAMPLE = 16, 45  # and of the input images, every 45th patch token
COMPARED = (
    "images",
    "masks",
    "image_features",
    "patch_tokens",
    "texts",
    "image_logits",
    "raw_maps",
    "probability",
    "top_k",
)
FINAL = ("maps", "image_scores")
METRICS = ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap")


def register_model() -> None:
    ps.register_parity_model(MODEL, config=MODEL_CONFIG)


def state_dict(seed: int = ps.WEIGHTS_SEED) -> dict[str, torch.Tensor]:
    """open_clip's initialisation after ``torch.manual_seed(seed)``, rounded to float16 values."""
    return ps.parity_state_dict(seed, MODEL, MODEL_CONFIG, float16_values=True)


def zsad_config(**overrides):
    from lightning_modules.bayes_pfl.config import BayesPFLConfig
    from lightning_modules.clip.config import BackboneConfig

    settings = {
        "backbone": BackboneConfig(
            name=MODEL, pretrained=None, image_size=IMAGE_SIZE, pos_embed_interpolation="bicubic"
        ),
        "feature_layers": list(FEATURE_LAYERS),
        "prompt_bank_size": PROMPT_NUM,
        "context_length": CONTEXT_LEN,
        "state_length": STATE_LEN,
        "num_flows": NUM_FLOWS,
        "test_samples": TEST_SAMPLES,
        "sampling_seed": SEED,
        "augmentation": "none",
    }
    return BayesPFLConfig(**(settings | overrides))


def initial_checkpoint(outputs: dict[str, np.ndarray]) -> dict:
    """The authors' initial checkpoint (train.py's ``{"MyModel": state_dict}``) from the official outputs."""
    state = {
        k.removeprefix(INITIAL): torch.from_numpy(np.array(v))
        for k, v in outputs.items()
        if k.startswith(INITIAL)
    }
    return {"MyModel": state}


def test_draws(paths: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """zsad's test-time draws of the images at ``paths`` (relative to the data root): what both sides use."""
    from lightning_modules.stochastic import keyed_generator, keyed_normal

    shape = (TEST_SAMPLES, MODEL_CONFIG["embed_dim"])
    context = keyed_normal(SEED, [(DATASET, p) for p in paths], shape)
    agnostic = keyed_generator(SEED, DATASET, "image-agnostic")
    return context, torch.randn(shape, generator=agnostic), torch.randn(shape, generator=agnostic)


def plan_noise(index: int, shape: tuple[int, ...], variance: float) -> np.ndarray:
    """GaussNoise's float64 array of plan ``index`` (what 1.3.1 draws with np.random.normal)."""
    return np.random.default_rng(index).standard_normal(shape) * variance**0.5


def forced(transform, applied: bool, **methods) -> None:
    """Make ``transform`` apply (p = 1) or not (p = 0) and return the given parameters."""
    transform.p = 1.0 if applied else 0.0
    for name, value in methods.items():
        setattr(transform, name, value)


def zsad_augment_forced(index: int, image, mask, pipeline=None):
    """zsad's Bayes-PFL augmentation (datamodules/augment.py: albumentations 1.4.24 with
    datamodules/augment_compat.py) with plan ``index``'s draws in place of its generators'."""
    from datamodules import augment_compat as compat
    from datamodules.augment import apply_bgr
    from datamodules.augment_compat import qu_et_al_pipeline

    plan = AUG_PLANS[index]
    pipeline = pipeline or qu_et_al_pipeline()
    rotate, rot90, rbc, noise, oneof = pipeline.transforms
    if isinstance(rotate, compat.Rotate):
        forced(
            rotate,
            plan["rotate"] is not None,
            get_params_dependent_on_data=lambda params, data: {"angle": plan["rotate"]},
        )
    else:  # albumentations' own Rotate (the tests' negative control): its angle draw returns the plan's
        draws = types.SimpleNamespace(random=lambda: 0.5, uniform=lambda *a: plan["rotate"])
        forced(rotate, plan["rotate"] is not None, py_random=draws)
    forced(rot90, plan["rot90"] is not None, get_params=lambda: {"factor": plan["rot90"]})
    alpha, beta = plan["rbc"] or (1.0, 0.0)
    forced(
        rbc,
        plan["rbc"] is not None,
        get_params_dependent_on_data=lambda params, data: {"alpha": alpha, "beta": beta * 255},
    )
    gauss_noise = {"gauss": None}

    def noise_params(params, data):
        gauss_noise["gauss"] = plan_noise(index, data["image"].shape, plan["noise"])
        return gauss_noise | (
            {"noise_map": gauss_noise["gauss"].astype(np.float32)}
            if not hasattr(noise, "variance_range")
            else {}
        )

    forced(noise, plan["noise"] is not None, get_params_dependent_on_data=noise_params)
    kind = plan["oneof"][0]
    which = {"blur": 0, "jitter": 1, "gauss": 2}[kind]
    forced(oneof, True)
    oneof.transforms_ps = [float(i == which) for i in range(3)]
    blur, jitter, gauss = oneof.transforms
    blur.get_params = lambda: {"kernel": 3}
    if kind == "jitter":
        b, c, sat, h, order = plan["oneof"][1:]
        jitter.get_params = lambda: {
            "brightness": b,
            "contrast": c,
            "saturation": sat,
            "hue": h,
            "order": list(order),
        }
    if kind == "gauss":
        gauss.get_params = lambda: {"ksize": plan["oneof"][1], "sigma": 0.0}
    return apply_bgr(pipeline, image, mask)


def raw_image_and_mask(root: Path, path: str):
    """A raw MVTec-layout file and its mask (0/255, "L"; an empty one for a good image), as zsad reads them."""
    from PIL import Image

    from datamodules.images import open_image, open_mask

    image = open_image(root / path)
    if "/good/" in path:
        return image, Image.new("L", image.size)
    return image, open_mask(root / path.replace("/test/", "/ground_truth/").replace(".png", "_mask.png"))


def zsad_augmentations(root: Path) -> dict[str, np.ndarray]:
    """Every plan through zsad's pipeline and the mosaic of MOSAIC_TILES, from the raw files under ``root``."""
    from datamodules.mosaic import paste_2x2

    images, masks = [], []
    for index, path in enumerate(AUG_IMAGES):
        image, mask = zsad_augment_forced(index, *raw_image_and_mask(root, path))
        images.append(np.array(image))
        masks.append(np.array(mask))
    tiles = [raw_image_and_mask(root, p) for p in MOSAIC_TILES]
    quarter = tiles[0][0].size  # combine_img's cells: the first image's size
    return {
        "aug_images": np.stack(images),
        "aug_masks": np.stack(masks),
        "mosaic_image": np.array(paste_2x2([t[0] for t in tiles], "RGB", quarter)),
        "mosaic_mask": np.array(paste_2x2([t[1] for t in tiles], "L", quarter)),
    }


def build_zsad(checkpoint: dict | None, cfg=None):
    import open_clip

    from lightning_modules.bayes_pfl.model import BayesPFL
    from lightning_modules.bayes_pfl.module import BayesPFLModule
    from lightning_modules.bayes_pfl.official_checkpoint import zsad_state_dict

    register_model()
    cfg = cfg or zsad_config()
    clip = open_clip.create_model(MODEL, pretrained=None)
    clip.load_state_dict(state_dict())
    model = BayesPFL(cfg, clip, open_clip.get_tokenizer(MODEL))
    module = BayesPFLModule(cfg, model=model)
    if checkpoint is not None:
        module.load_state_dict(zsad_state_dict(module, checkpoint, "parity"), strict=False)
    return module, model, cfg


def zsad_batch(root: Path):
    from datamodules import AnomalyDataModule, DataConfig
    from lightning_modules.bayes_pfl.spec import BAYES_PFL

    data = AnomalyDataModule(
        DataConfig(name=DATASET, root=str(root), num_workers=0, eval_batch_size=64),
        IMAGE_SIZE,
        BAYES_PFL.preprocessing(zsad_config(), DATASET),
    )
    batch = next(iter(data.test_dataloader()))
    return data, batch, [str(Path(p).relative_to(root)) for p in batch["image_path"]]


def evaluate(
    categories, category_ids, scores, labels, maps, masks, alpha: float | None = 0.5
) -> dict[str, float]:
    """zsad's evaluator; ``scores`` are ``[N, 2]`` components combined by the authors' rule (``alpha``), or
    final ``[N]`` scores (``alpha=None``: the official side's)."""
    from lightning_modules.bayes_pfl.model import image_score_rule

    rule = None if alpha is None else image_score_rule(alpha)
    metrics = ps.evaluator_metrics(
        categories,
        category_ids,
        scores,
        labels,
        maps,
        masks,
        image_score_rule=rule,
        score_dtype=torch.float64,
    )
    scored = dict.fromkeys(key.split("/")[0] for key in metrics)  # the categories the evaluator scored
    return {f"{c}/{k}": metrics.get(f"{c}/{k}") for c in scored for k in (*METRICS, "aupro_cflow")}


def zsad_outputs(root: Path, checkpoint: dict, train_paths: list[str], cfg=None, train: bool = True) -> dict:
    """zsad on the files under ``root`` from the authors' initial ``checkpoint``: the test loop (stage 2, the
    keyed draws) and two training steps on the images ``train_paths`` (their first training batch)."""
    from lightning_modules.bayes_pfl.model import combine_image_scores
    from lightning_modules.bayes_pfl.module import build_optimizers
    from lightning_modules.bayes_pfl.official_checkpoint import zsad_name

    module, model, cfg = build_zsad(checkpoint, cfg)
    data, batch, paths = zsad_batch(root)
    images, masks, labels, ids = batch["image"], batch["mask"], batch["label"], batch["category_id"]
    words = [data.categories[int(i)] for i in ids]
    size = tuple(masks.shape[-2:])
    module.eval()
    with torch.no_grad():
        features = model.encode_images(images)
        eps = test_draws(paths)
        z = model.sample_prompts(features["image"], *eps)
        texts = model.encode_texts(words, *z[:3])
        logits = model.image_logits(texts, features, stage=2)
        probability, raw = model.predict_from_draws(features, words, size, eps, stage=2)
        top_k = [cfg.top_k] * len(paths)
        components = model.image_score_components(probability, raw, top_k)
        maps = model.smooth(raw)
    scores = torch.empty(len(paths), dtype=torch.float64)
    for c in ids.unique():
        keep = ids == c
        scores[keep] = combine_image_scores(components[keep], cfg.image_score_alpha)
    result = {
        "paths": np.array(paths),
        "category_ids": ids.numpy(),
        "labels": labels.numpy(),
        "images": images.numpy(),
        "masks": masks.numpy(),
        "image_features": features["image"].numpy(),
        "patch_tokens": features["patches"].numpy(),
        "texts": texts.numpy(),
        "image_logits": logits.numpy(),
        "raw_maps": raw.numpy(),
        "probability": components[:, 0].numpy(),
        "top_k": components[:, 1].numpy(),
        "maps": maps.numpy(),
        "image_scores": scores.numpy(),
    }
    metrics = evaluate(
        data.categories, ids.numpy(), components.numpy(), labels.numpy(), maps.numpy(), masks.numpy()
    )
    result |= {
        "metric_names": np.array(sorted(metrics)),
        "metrics": np.array([metrics[k] for k in sorted(metrics)]),
    }
    if not train:
        return result

    # train.py's loop body, twice, on their first training batch
    order = [paths.index(p) for p in train_paths]
    step_features = {k: v[order] for k, v in features.items()}
    step_words = [words[i] for i in order]
    module.train()
    stage1, _, schedule = build_optimizers(model, cfg, TOTAL_STEPS)
    params = dict(model.named_parameters())
    step = {"loss": [], "loss_parts": [], "grads": [], "params": [], "lr": []}
    for s in range(2):
        torch.manual_seed(STEP_SEED + s)
        eps = model.training_draws(len(order), torch.device("cpu"))
        prompt = int(torch.randint(0, PROMPT_NUM, (1, 1))[0])
        output = model.scores_from_draws(step_features, step_words, size, prompt, 1, eps)
        losses = model.loss(output, labels[order], masks[order], 1)
        stage1.zero_grad()
        losses["loss"].backward()
        step["lr"].append([g["lr"] for g in stage1.param_groups])
        stage1.step()
        schedule.step()
        step["loss"].append(float(losses["loss"].detach()))
        step["loss_parts"].append(
            [float(losses[k].detach()) for k in ("class", "segmentation", "kl", "orthogonal")]
        )
        step["grads"].append(step_grads := {})
        step["params"].append(step_params := {})
        for name, p in params.items():
            if p.grad is not None:
                step_grads[name] = p.grad.detach().clone()
                step_params[name] = p.detach().clone()
    result["step_loss"] = np.array(step["loss"])
    result["step_loss_parts"] = np.array(step["loss_parts"])
    result["step_lr"] = np.array([lr[0] for lr in step["lr"]])
    result["zsad_name"] = zsad_name  # not saved: maps their parameter names for the comparison
    result["step_grads"], result["step_params"] = step["grads"], step["params"]
    return result


# --- the official side (a subprocess) -----------------------------------------------------------------
_CpuZeros, _RecordingCv2, _Recorder = ps.CpuZeros, ps.RecordingCv2, ps.Recorder  # Qu et al.'s shims


class _KeyedDraws:
    """``torch`` for their models/PFL.py: in test mode each ``randn_like`` returns the next row of the
    current image's zsad draws (R image-specific, then R normal, then R abnormal, as their calls come)."""

    def __init__(self):
        self.rows: list[torch.Tensor] | None = None

    def __getattr__(self, name):
        return getattr(torch, name)

    def start(self, draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        self.rows = [row[None] for part in draws for row in part]

    def randn_like(self, tensor, *args, **kwargs):
        if self.rows is None:  # training: the global RNG, as theirs
            return torch.randn_like(tensor, *args, **kwargs)
        row = self.rows.pop(0)
        assert row.shape == tensor.shape, (row.shape, tensor.shape)
        return row.to(tensor.dtype)


def _imgaug_stub() -> types.ModuleType:
    """``imgaug`` for their datasets.py: the augmenters are built in ``MyDataset.__init__`` but used only by
    the DRAEM synthesis (``generate_anomaly = False``); a stub's augmenters refuse to run."""

    class _Refuses:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            raise AssertionError("an imgaug augmenter ran: the parity assumes none does")

    augmenters = types.ModuleType("imgaug.augmenters")
    augmenters.pillike = types.SimpleNamespace(
        EnhanceSharpness=_Refuses, Autocontrast=_Refuses, Equalize=_Refuses
    )
    for name in (
        "GammaContrast",
        "MultiplyAndAddToBrightness",
        "AddToHueAndSaturation",
        "Solarize",
        "Posterize",
    ):
        setattr(augmenters, name, _Refuses)
    for name in ("Invert", "Affine", "Sequential"):
        setattr(augmenters, name, _Refuses)
    package = types.ModuleType("imgaug")
    package.augmenters = augmenters
    return package


def official_setup(
    official: Path, root: Path, weights: Path, test_samples: int = TEST_SAMPLES
) -> types.SimpleNamespace:
    """Their data preparation, CLIP and (seeded) model, with the shims; what the parity and the speed
    benchmark (benchmarks/speed_bayes_pfl.py) run their code on."""
    work = Path(tempfile.mkdtemp(prefix="zsad-bayes-pfl-official-"))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations  # noqa: F401 - before the imgaug stub (albumentations 1.x probes imgaug itself)

    stub = _imgaug_stub()
    sys.modules["imgaug"], sys.modules["imgaug.augmenters"] = stub, stub.augmenters
    sys.path.insert(0, str(official))  # before benchmarks/
    # their tokenizer reads ./models/bpe_simple_vocab_16e6.txt.gz and their metrics write to ./{save_path}
    (work / "models").symlink_to(official / "models")
    os.chdir(work)
    weights_state = torch.load(weights, weights_only=True)
    torch.jit.load = lambda *a, **k: types.SimpleNamespace(
        eval=lambda: types.SimpleNamespace(state_dict=lambda: dict(weights_state))
    )
    torch.Tensor.cuda = lambda self, *a, **k: (
        self
    )  # their PFL.forward and loss build CPU tensors then .cuda()

    import datasets as their_datasets
    import models.metric_and_visualization as their_metrics  # noqa: F401 - handed on in the namespace
    import models.PFL as their_pfl
    import models.transformer as their_transformer
    import test as their_test  # noqa: F401 - handed on in the namespace
    from dataset.datasets import MVTec as their_conversion
    from dataset.make_meta import metaSolver
    from models.model_CLIP import Load_CLIP
    from models.VPB import Context_Prompting

    their_transformer.torch = _CpuZeros()
    draws = _KeyedDraws()
    their_pfl.torch = draws
    their_datasets.Image.fromarray = ps.old_pillow_fromarray(their_datasets.Image.fromarray)

    # their data preparation (README: make_dataset.py, then make_meta.py)
    data_root = work / "mvisa" / "data"
    cv2_recorder = _RecordingCv2(their_conversion.cv2)
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

    # their CLIP and model, seeded; the initial state saved as train.py saves checkpoints
    config_path = work / f"{MODEL}.json"
    config_path.write_text(json.dumps(MODEL_CONFIG))
    model_clip, _, preprocess_test = Load_CLIP(IMAGE_SIZE, str(weights), device="cpu")
    model_clip.eval()
    args = types.SimpleNamespace(
        dataset="mvtec",
        data_path=str(data_root),
        save_path="results",
        checkpoint_path=str(work / "initial.pth"),
        config_path=str(config_path),
        pretrained_path=str(weights),
        model="ViT-parity",
        pretrained="openai",
        features_list=list(FEATURE_LAYERS),
        image_size=IMAGE_SIZE,
        seed=SEED,
        num_flows=NUM_FLOWS,
        prompt_context_len=CONTEXT_LEN,
        prompt_num=PROMPT_NUM,
        prompt_state_len=STATE_LEN,
        sample_num=test_samples,
        device_id=0,
        vision_width=MODEL_CONFIG["vision_cfg"]["width"],
        text_width=MODEL_CONFIG["text_cfg"]["width"],
        embed_dim=MODEL_CONFIG["embed_dim"],
    )
    torch.manual_seed(INIT_SEED)
    my_model = Context_Prompting(args=args)
    torch.save({"MyModel": my_model.state_dict()}, args.checkpoint_path)
    return types.SimpleNamespace(**{k: v for k, v in locals().items() if not k.startswith("_")})


def official_optimizer(setup: types.SimpleNamespace):
    """train.py's ``optimizer_stage1`` (its groups, verbatim in logic) and the warm-up cosine schedule, with
    each parameter's name."""
    from transformers import get_cosine_schedule_with_warmup

    model = setup.my_model
    groups: dict[str, list] = {"prompt": [], "pfl": [], "linear": []}
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names[id(p)] = name
        if "prompt" in name:
            groups["prompt"].append(p)
        elif "PFL" in name and "encoder" not in name and "decoder" not in name:
            groups["pfl"].append(p)
        elif "temperature" not in name:
            groups["linear"].append(p)
    optimizer = torch.optim.Adam(
        [
            {"params": groups["prompt"], "lr": 0.001},
            {"params": [model.temperature_pixel, model.temperature_image], "lr": 0.01},
            {"params": groups["pfl"], "lr": 0.001},
            {"params": groups["linear"], "lr": 0.0001},
        ],
        lr=0.0001,
        betas=(0.5, 0.999),
    )
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=int(0.1 * TOTAL_STEPS), num_training_steps=TOTAL_STEPS
    )
    return optimizer, scheduler, names


def official_step(setup: types.SimpleNamespace, items: dict, optimizer, scheduler) -> list:
    """One iteration of train.py's loop body (stage 1) on ``items``: returns [loss, class, seg, dist, text]."""
    from loss import DiceLoss, FocalLoss, Orthogonal_Loss
    from models.model_CLIP import tokenize
    from models.VPB import TextEncoder

    model, args = setup.my_model, setup.args
    focal, dice, orthogonal, cross = FocalLoss(), DiceLoss(), Orthogonal_Loss(), torch.nn.CrossEntropyLoss()
    image, anomaly = items["img"], items["anomaly"]
    gt = items["img_mask"].squeeze()
    gt[gt > 0.5], gt[gt < 0.5] = 1, 0
    optimizer.zero_grad()
    with torch.no_grad():
        image_features, _, patch_tokens = setup.model_clip.encode_image(image, args.features_list)
    text_embeddings, loss_reg = model.forward_ensemble(
        TextEncoder(setup.model_clip, args),
        image_features,
        patch_tokens,
        items["cls_name"],
        "cpu",
        tokenize,
        mode="train",
    )
    pro_img, maps_list = model(text_embeddings, image_features, patch_tokens, stage=1, mode="train")
    pro_img = pro_img.squeeze(2)
    index = torch.randint(0, PROMPT_NUM, (1, 1))[0]
    pro_img = torch.cat([pro_img[:, index], pro_img[:, index + PROMPT_NUM]], dim=1)
    loss_class = cross(pro_img, anomaly)
    loss_dist = loss_reg[1] + loss_reg[2] + loss_reg[3]
    loss_text = orthogonal(text_embeddings, args)
    loss_seg = 0
    for anomaly_map in maps_list:
        selected = torch.softmax(
            torch.cat([anomaly_map[:, index], anomaly_map[:, index + PROMPT_NUM]], dim=1), dim=1
        )
        loss_seg = loss_seg + focal(selected.clone(), gt.clone()) + dice(selected, gt)
    loss = loss_class + loss_seg + loss_dist + loss_text
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return [float(x.detach()) for x in (loss, loss_class, loss_seg, loss_dist, loss_text)]


def official_train_batch(setup: types.SimpleNamespace, batch_size: int = TRAIN_BATCH) -> dict:
    """The first batch of their training loader in test mode (the augmentation is compared on its own)."""
    maker = setup.their_datasets.Makedataset(
        train_data_path=str(setup.data_root),
        preprocess_test=setup.preprocess_test,
        mode="test",
        image_size=IMAGE_SIZE,
    )
    loader, _ = maker.mask_dataset(name="mvtec", product_list=None, batchsize=batch_size, shuf=False)
    return next(iter(loader))


def official_outputs(official: Path, root: Path, weights: Path) -> dict[str, np.ndarray]:
    setup = official_setup(official, root, weights)
    their_datasets, their_metrics, their_test = setup.their_datasets, setup.their_metrics, setup.their_test
    draws, original, model_clip, my_model, args = (
        setup.draws,
        setup.original,
        setup.model_clip,
        setup.my_model,
        setup.args,
    )
    Context_Prompting = setup.Context_Prompting
    augmentations = official_augmentations(their_datasets, setup.data_root, setup.cv2_recorder, root)
    initial = {f"{INITIAL}{k}": v.detach().numpy().copy() for k, v in my_model.state_dict().items()}

    # test.py itself, with test.sh's arguments; capture what each image goes through
    captured: dict[str, list] = {
        "images": [],
        "image_features": [],
        "patch_tokens": [],
        "texts": [],
        "image_logits": [],
    }
    getitem = their_datasets.MyDataset.__getitem__

    def item_with_draws(self, index):
        item = getitem(self, index)
        if self.mode == "test" and draws.rows is not None:
            context, normal, abnormal = test_draws([original(item["img_path"])])
            draws.start((context[0], normal, abnormal))
        return item

    their_datasets.MyDataset.__getitem__ = item_with_draws
    encode_image = model_clip.encode_image

    def recording_encode(image, layers):
        image_features, proj, patches = encode_image(image, layers)
        if draws.rows is not None:
            captured["images"].append(image.numpy().copy())
            captured["image_features"].append(image_features.numpy().copy())
            captured["patch_tokens"].append(torch.stack(patches, dim=1).numpy().copy())
        return image_features, proj, patches

    model_clip.encode_image = recording_encode
    forward_ensemble, forward = Context_Prompting.forward_ensemble, Context_Prompting.forward

    def recording_ensemble(self, *a, **k):
        texts, reg = forward_ensemble(self, *a, **k)
        if draws.rows is not None:
            captured["texts"].append(texts.detach().numpy().copy())
        return texts, reg

    def recording_forward(self, *a, **k):
        pro_img, maps = forward(self, *a, **k)
        if draws.rows is not None:
            captured["image_logits"].append(pro_img.detach()[..., 0].numpy().copy())
        return pro_img, maps

    Context_Prompting.forward_ensemble, Context_Prompting.forward = recording_ensemble, recording_forward
    results_box = {}
    calculate = their_test.calcuate_metric_pixel

    def capture(results, *a, **k):
        results_box["results"] = results
        return calculate(results, *a, **k)

    their_test.calcuate_metric_pixel = capture
    their_test.Load_CLIP = lambda *a, **k: (model_clip, None, setup.preprocess_test)
    recorders = {
        name: _Recorder(getattr(their_metrics, name)) for name in ("roc_auc_score", "average_precision_score")
    }
    for name, recorder in recorders.items():
        setattr(their_metrics, name, recorder)
    draws.rows = []
    their_test.test(args)
    draws.rows = None
    Context_Prompting.forward_ensemble, Context_Prompting.forward = forward_ensemble, forward
    results = results_box["results"]
    paths = [original(p) for p in results["path"]]
    cls_names = np.array(results["cls_names"])
    obj_list = list(dict.fromkeys(results["cls_names"]))
    roc, ap = recorders["roc_auc_score"].calls, recorders["average_precision_score"].calls
    n = len(paths)
    maps, scores, rows = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE)), np.zeros(n), []
    for k, obj in enumerate(obj_list):  # per object: roc(px), ap(px), roc(sp), ap(sp)
        keep = cls_names == obj
        maps[keep] = roc[2 * k][0][1].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        scores[keep] = roc[2 * k + 1][0][1]
        rows.append([roc[2 * k][1], ap[2 * k][1], roc[2 * k + 1][1], ap[2 * k + 1][1]])
    masks = np.concatenate([m.numpy() for m in results["imgs_masks"]])[:, 0]
    raw = np.stack(results["anomaly_maps"])
    top_k = np.array([np.mean(np.partition(m.reshape(-1), kth=-2000)[-2000:]) for m in raw])
    cflow = [their_metrics.cal_pro_score(masks[cls_names == o], maps[cls_names == o]) for o in obj_list]
    labels = np.array([int(a) for a in results["gt_sp"]])
    sampled = []  # their metric functions on every SAMPLE-th row and column: what the fixture can keep
    for obj in obj_list:
        keep = cls_names == obj
        gt_px, pr_px = masks[keep][:, ::SAMPLE, ::SAMPLE], maps[keep][:, ::SAMPLE, ::SAMPLE]
        sampled.append(
            [
                their_metrics.roc_auc_score(gt_px.ravel(), pr_px.ravel()),
                their_metrics.average_precision_score(gt_px.ravel(), pr_px.ravel()),
                their_metrics.roc_auc_score(labels[keep], scores[keep]),
                their_metrics.average_precision_score(labels[keep], scores[keep]),
                their_metrics.cal_pro_score(gt_px, pr_px),
            ]
        )
    result = {
        "paths": np.array(paths),
        "cls": cls_names,
        "labels": labels,
        "masks": masks,
        "images": np.concatenate(captured["images"]),
        "image_features": np.concatenate(captured["image_features"]),
        "patch_tokens": np.concatenate(captured["patch_tokens"]),
        "texts": np.concatenate(captured["texts"]),
        "image_logits": np.concatenate(captured["image_logits"]),
        "raw_maps": raw,
        "probability": np.array([float(p) for p in results["pr_sp"]]),
        "top_k": top_k,
        "maps": maps,
        "image_scores": scores,
        "metric_objects": np.array(obj_list),
        "official_metrics": np.asarray(rows),
        "official_aupro_cflow": np.asarray(cflow),
        "sampled_metrics": np.asarray(sampled),
    }

    # train.py's loop body, twice, on the first batch of their training loader (test mode: no augmentation)
    items = official_train_batch(setup)
    my_model.zk_n = my_model.zk_a = None
    my_model.train()
    optimizer, scheduler, names = official_optimizer(setup)
    step = {"loss": [], "parts": [], "lr": [], "grads": [], "params": []}
    for s in range(2):
        torch.manual_seed(STEP_SEED + s)
        step["lr"].append(optimizer.param_groups[0]["lr"])
        losses = official_step(setup, dict(items), optimizer, scheduler)
        step["loss"].append(losses[0])
        step["parts"].append(losses[1:])
        with_grad = [p for p in my_model.parameters() if p.grad is not None]
        step["grads"].append({names[id(p)]: p.grad.detach().numpy().copy() for p in with_grad})
        step["params"].append({names[id(p)]: p.detach().numpy().copy() for p in with_grad})
    result |= {
        "train_paths": np.array([original(p) for p in items["img_path"]]),
        "step_loss": np.array(step["loss"]),
        "step_loss_parts": np.array(step["parts"]),
        "step_lr": np.array(step["lr"]),
    }
    for s in range(2):
        for name in step["grads"][s]:
            result[f"grad{s}|{name}"] = step["grads"][s][name]
            result[f"param{s}|{name}"] = step["params"][s][name]
    return result | initial | augmentations


def official_augmentations(
    their_datasets, data_root: Path, cv2_recorder, root: Path
) -> dict[str, np.ndarray]:
    """Their ``MyDataset.Trans`` (albumentations 1.3.1, on the BGR array) under each plan's draws, and their
    ``combine_img`` mosaic with ``random.choice`` returning MOSAIC_TILES, on their re-packed BMP files."""
    from PIL import Image

    bmp_of = {str(Path(src).relative_to(root)): bmp for bmp, src in cv2_recorder.sources.items()}
    dataset = their_datasets.MyDataset(
        root=str(data_root), transform=None, target_transform=None, mode="train", dataset="mvtec"
    )
    images, masks = [], []
    for index, path in enumerate(AUG_IMAGES):
        plan = AUG_PLANS[index]
        bmp = bmp_of[path]
        image = Image.open(bmp)
        if "/good/" in path:
            mask = Image.fromarray(np.zeros((image.size[1], image.size[0])), mode="L")
        else:
            mask_file = bmp.replace("/test/anomaly/", "/ground_truth/anomaly/").replace(".bmp", ".png")
            mask = Image.fromarray(
                (np.array(Image.open(mask_file).convert("L")) > 0).astype(np.uint8) * 255, mode="L"
            )
        rotate, rot90, rbc, noise, oneof = dataset.img_trans.transforms
        forced(
            rotate,
            plan["rotate"] is not None,
            get_params_dependent_on_targets=lambda params, a=plan["rotate"]: {"angle": a},
        )
        forced(rot90, plan["rot90"] is not None, get_params=lambda k=plan["rot90"]: {"factor": k})
        alpha, beta = plan["rbc"] or (1.0, 0.0)
        forced(rbc, plan["rbc"] is not None, get_params=lambda a=alpha, b=beta: {"alpha": a, "beta": b})
        forced(
            noise,
            plan["noise"] is not None,
            get_params_dependent_on_targets=lambda params, i=index, v=plan["noise"]: {
                "gauss": plan_noise(i, params["image"].shape, v)
            },
        )
        kind = plan["oneof"][0]
        which = {"blur": 0, "jitter": 1, "gauss": 2}[kind]
        forced(oneof, True)
        oneof.transforms_ps = [float(i == which) for i in range(3)]
        blur, jitter, gauss = oneof.transforms
        blur.get_params = lambda: {"ksize": 3}
        if kind == "jitter":
            b, c, sat, h, order = plan["oneof"][1:]
            jitter.get_params = lambda b=b, c=c, sat=sat, h=h, o=order: {
                "brightness": b,
                "contrast": c,
                "saturation": sat,
                "hue": h,
                "order": list(o),
            }
        if kind == "gauss":
            gauss.get_params = lambda k=plan["oneof"][1]: {"ksize": k, "sigma": 0.0}
        out_image, out_mask = dataset.Trans(image, mask)
        images.append(np.array(out_image))
        masks.append(np.array(out_mask))
    # combine_img: four random.choice draws among the category's anomalous BMP files
    tiles = [Path(bmp_of[p]).name for p in MOSAIC_TILES]
    choice = their_datasets.random.choice
    their_datasets.random.choice = lambda files: tiles.pop(0)
    mosaic_image, mosaic_mask = dataset.combine_img("disc")
    their_datasets.random.choice = choice
    return {
        "aug_images": np.stack(images),
        "aug_masks": np.stack(masks),
        "mosaic_image": np.array(mosaic_image),
        "mosaic_mask": np.array(mosaic_mask),
    }


# --- comparison -------------------------------------------------------------------------------------------
def compare(official: dict[str, np.ndarray], ours: dict) -> dict[str, float]:
    order = [list(ours["paths"]).index(p) for p in official["paths"]]  # zsad's rows in their order
    deltas: dict[str, float] = {}
    for key in (*COMPARED, *FINAL):
        theirs = official[key]
        mine = np.asarray(ours[key])[order]
        if key == "texts":
            mine = mine.reshape(theirs.shape)
        deltas[key] = ps.print_delta(key, theirs, mine)
    names = list(ours["metric_names"])
    metrics = dict(zip(names, ours["metrics"], strict=True))
    theirs = official["official_metrics"]
    mine = np.array([[metrics[f"{obj}/{m}"] for m in METRICS] for obj in official["metric_objects"]])
    deltas["metrics (pixel/image AUROC, AP)"] = ps.print_delta(
        "metrics (pixel/image AUROC, AP)", theirs, mine
    )
    categories = list(official["metric_objects"])
    on_theirs = official_maps_metrics(official, categories)
    mine = np.array([[on_theirs[f"{obj}/{m}"] for m in METRICS] for obj in categories])
    deltas["metrics on their maps"] = ps.print_delta("zsad's metrics on their maps", theirs, mine)
    cflow = np.array([on_theirs[f"{obj}/aupro_cflow"] for obj in categories])
    deltas["aupro_cflow"] = ps.print_delta(
        "aupro_cflow on their maps", official["official_aupro_cflow"], cflow
    )
    for key in ("step_loss", "step_loss_parts", "step_lr"):
        deltas[key] = ps.print_delta(key, official[key], ours[key])
    for key in ("aug_images", "aug_masks", "mosaic_image", "mosaic_mask"):
        deltas[key] = ps.print_delta(f"augmentation: {key}", official[key], ours[key])
    for s in range(2):
        grads = {
            ours["zsad_name"](k.split("|", 1)[1]): v for k, v in official.items() if k.startswith(f"grad{s}|")
        }
        params = {
            ours["zsad_name"](k.split("|", 1)[1]): v
            for k, v in official.items()
            if k.startswith(f"param{s}|")
        }
        grads.pop(None, None)
        params.pop(None, None)
        missing = set(grads) ^ set(ours["step_grads"][s])
        if missing:
            raise AssertionError(f"parameters with gradients differ: {sorted(missing)[:5]}")
        g = max(ps.max_abs_delta(grads[n], ours["step_grads"][s][n].reshape(grads[n].shape)) for n in grads)
        p = max(
            ps.max_abs_delta(params[n], ours["step_params"][s][n].reshape(params[n].shape)) for n in params
        )
        print(f"  {'gradients, step ' + str(s + 1):<32} max |delta| = {g:.3e}")
        print(f"  {'parameters after step ' + str(s + 1):<32} max |delta| = {p:.3e}")
        deltas[f"gradients_step{s + 1}"], deltas[f"params_after_step{s + 1}"] = g, p
    return deltas


def official_maps_metrics(official: dict[str, np.ndarray], categories: list[str]) -> dict[str, float]:
    """zsad's evaluator on the official final maps and image scores (their ``cal_pro_score`` is the
    200-threshold AUPRO that zsad's ``aupro_cflow`` reproduces)."""
    ids = np.array([categories.index(c) for c in official["cls"]])
    return evaluate(
        categories,
        ids,
        official["image_scores"],
        official["labels"],
        official["maps"],
        official["masks"],
        None,
    )


def fixture_arrays(official: dict[str, np.ndarray], weights: dict[str, torch.Tensor], root: Path) -> dict:
    """What the CI test needs: the official outputs (maps subsampled), the initial state, the inputs' record."""
    from lightning_modules.bayes_pfl.official_checkpoint import zsad_name

    # the initial state without the entries zsad's reader ignores (tests/lightning_modules/bayes_pfl covers
    # those), step 2's gradients and parameters (step 1 runs at the warm-up's lr 0), every loss
    keep = {k: v for k, v in official.items() if k.startswith(("grad1|", "param1|", "step_"))}
    keep |= {
        k: v for k, v in official.items() if k.startswith(INITIAL) and zsad_name(k.removeprefix(INITIAL))
    }
    for key in (
        "paths",
        "cls",
        "labels",
        "train_paths",
        "metric_objects",
        "official_metrics",
        "official_aupro_cflow",
        "sampled_metrics",
        *("aug_images", "aug_masks", "mosaic_image", "mosaic_mask"),
    ):
        keep[key] = official[key]
    for key in ("image_features", "texts", "image_logits", "probability", "top_k", "image_scores"):
        keep[key] = official[key]
    for key in ("raw_maps", "maps", "masks"):
        keep[key] = official[key][:, ::SAMPLE, ::SAMPLE]
    keep["patch_tokens"] = official["patch_tokens"][:, :, ::TOKEN_SAMPLE]
    keep["images"] = official["images"][:, :, ::IMAGE_SAMPLE, ::IMAGE_SAMPLE]
    keep |= ps.input_record(weights, root, official["paths"], official["masks"])
    return keep


def main() -> None:
    args = ps.parity_arguments(
        __doc__, "a checkout of xiaozhen228/Bayes-PFL", "PYTHONPATH entries for their imports"
    )
    if ps.serve_official_side(args, official_outputs):
        return
    weights = state_dict()
    work = Path(tempfile.mkdtemp(prefix="zsad-parity-bayes-pfl-"))
    root = ps.write_parity_images(work / "mvtec")
    env = tuple(p for p in args.official_env.split(os.pathsep) if p)
    official = ps.run_official_side(__file__, args.official, root, weights, work, env)
    ours = zsad_outputs(
        root, initial_checkpoint(official), list(official["train_paths"])
    ) | zsad_augmentations(root)
    print("Bayes-PFL parity (max |official - zsad|):")
    deltas = compare(official, ours)
    if args.write_fixture:
        ps.save_fixture(FIXTURE, **fixture_arrays(official, weights, root))
    print(json.dumps({"method": "bayes_pfl", "max_abs_delta": deltas}))


if __name__ == "__main__":
    main()
