"""Shared pieces of the parity scripts (benchmarks/parity_*.py) and of the tests that compare zsad with
the fixtures those scripts write (tests/fixtures/parity/*.npz).

A parity run feeds the official code and zsad the *same* tiny random-weight CLIP (built once from a seed,
its state dict loaded into both) and the *same image files on disk* (a synthetic MVTec-layout dataset
generated from a seed, read by each side's own loader and transforms), then prints max |delta| per
quantity. The fixtures keep the official outputs plus fingerprints of the weights and of the decoded
pixels, so a test that runs zsad alone can tell "zsad deviates" from "the inputs changed".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datamodules.synthetic import generate_synthetic_dataset  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity"

# A tiny ViT with WinCLIP's geometry (240 px, 16 px patches: a 15 x 15 grid, as ViT-B-16-plus-240) and a
# small text tower: fast on CPU, yet every code path of the real backbones runs.
PARITY_MODEL = "zsad-parity-vit-240"
PARITY_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 240, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
WEIGHTS_SEED = 0
IMAGES_SEED = 7
CATEGORIES = ("disc", "weave")  # synthetic "industrial" categories (no underscores: same word either way)
IMAGE_FILE_SIZE = 100  # px; not the model's size, so each side's resize runs
# The same tower with 12 vision blocks, for official code that rebuilds or reads the last 12 blocks
# (APRIL-GAN's ViT reads the 12th block's attention, AnoVL's forward replaces the attention of blocks
# -1..-12 with its V-V surgery).
PARITY_MODEL_12 = "zsad-parity-vit-240-12"
# 12 vision blocks that OpenAI's loader can rebuild from a state dict (open_clip's
# build_model_from_openai_state_dict assumes heads 64 wide in both towers), native at 160 px (10 x 10
# patches), so that code run at 240 px meets a model of another native size, as at 518 px with
# ViT-L-14-336. Without quick_gelu, like the ViT-L-14-336.json that the VAND authors' factory rebuilds
# from; its "-quickgelu" twin is what OpenAI's weights run as (zsad's ViT-L-14-336-quickgelu).
PARITY_MODEL_OPENAI = "zsad-parity-vit-openai-160"
PARITY_MODEL_OPENAI_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 160, "layers": 12, "width": 64, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
PARITY_MODELS: dict[str, dict[str, Any]] = {
    PARITY_MODEL: PARITY_MODEL_CONFIG,
    PARITY_MODEL_12: {
        **PARITY_MODEL_CONFIG,
        "vision_cfg": {**PARITY_MODEL_CONFIG["vision_cfg"], "layers": 12},
    },
    PARITY_MODEL_OPENAI: PARITY_MODEL_OPENAI_CONFIG,
    f"{PARITY_MODEL_OPENAI}-quickgelu": {**PARITY_MODEL_OPENAI_CONFIG, "quick_gelu": True},
}


def write_model_config(folder: Path, config: dict[str, Any] | None = None, name: str = PARITY_MODEL) -> Path:
    """The parity model's open_clip JSON in ``folder`` (for open_clip.add_model_config or a vendored copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config or PARITY_MODELS[name], indent=2))
    return path


def register_parity_model(
    name: str = PARITY_MODEL, clip_package: Any = open_clip, config: dict[str, Any] | None = None
) -> None:
    """Make the parity model ``name`` (a key of :data:`PARITY_MODELS`, or a script's own ``config``) known to
    ``clip_package``: the installed open_clip, or an official checkout's vendored copy (same
    ``list_models``/``add_model_config``)."""
    if name not in clip_package.list_models():
        folder = Path(tempfile.mkdtemp(prefix="zsad-parity-"))
        clip_package.add_model_config(write_model_config(folder, config or PARITY_MODELS[name], name))


def parity_state_dict(
    seed: int = WEIGHTS_SEED,
    name: str = PARITY_MODEL,
    config: dict[str, Any] | None = None,
    float16_values: bool = False,
) -> dict[str, torch.Tensor]:
    """The random weights both sides load: open_clip's initialisation after ``torch.manual_seed(seed)``;
    ``float16_values``: rounded to float16 values (as OpenAI's released weights are, which the CLIP code of
    Qu et al., VCP-CLIP and Bayes-PFL, casts through float16)."""
    register_parity_model(name, config=config)
    torch.manual_seed(seed)
    weights = open_clip.create_model(name, pretrained=None).state_dict()
    rounded = {
        k: v.half().float() if float16_values and v.is_floating_point() else v for k, v in weights.items()
    }
    return {k: v.detach().clone() for k, v in rounded.items()}


def parity_clip(state_dict: dict[str, torch.Tensor] | None = None, name: str = PARITY_MODEL):
    """``(model, tokenizer)``: the parity CLIP ``name`` in eval mode, frozen, with ``state_dict`` (default seed)."""
    register_parity_model(name)
    model = open_clip.create_model(name, pretrained=None)
    model.load_state_dict(state_dict if state_dict is not None else parity_state_dict(name=name))
    model.eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(name)


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> np.ndarray:
    """``[n_tensors, 2]`` float64 (sum, sum of |x|) per tensor in key order: equal weights, equal rows."""
    rows = [(float(v.double().sum()), float(v.double().abs().sum())) for _, v in sorted(state_dict.items())]
    return np.asarray(rows, dtype=np.float64)


def write_parity_images(root: Path, seed: int = IMAGES_SEED, n_train: int = 1) -> Path:
    """A small synthetic MVTec-layout dataset (PNG images and 0/255 masks) under ``root``; returns ``root``.
    ``n_train`` normal training images per category (the few-shot parity draws its references there)."""
    generate_synthetic_dataset(
        root,
        seed=seed,
        style="industrial",
        categories=list(CATEGORIES),
        image_size=IMAGE_FILE_SIZE,
        n_train=n_train,
        n_test_good=2,
        n_test_defect_per_kind=1,
        overwrite=True,
    )
    return root


def pixels_fingerprint(root: Path) -> str:
    """sha256 of every image file's relative path and decoded pixels (PNG bytes may differ by zlib)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".bmp"}):
        digest.update(str(path.relative_to(root)).encode())
        with Image.open(path) as image:
            digest.update(image.mode.encode())
            digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()


def max_abs_delta(official: Any, ours: Any) -> float:
    """max |official - ours| in float64 (shapes must agree)."""
    a = np.asarray(torch.as_tensor(official).detach().double().cpu())
    b = np.asarray(torch.as_tensor(ours).detach().double().cpu())
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: official {a.shape}, zsad {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def print_delta(name: str, official: Any, ours: Any) -> float:
    delta = max_abs_delta(official, ours)
    print(f"  {name:<32} max |delta| = {delta:.3e}")
    return delta


#: How far two sides' maps may differ in the parity tests (float32 noise, several times what they measure).
MAPS_ATOL = 1e-5


def cflow_aupro_tolerance(
    maps: Any,
    masks: Any,
    category_ids: Any,
    map_atol: float = MAPS_ATOL,
    draws: int = 16,
    fpr_limit: float = 0.3,
) -> np.ndarray:
    """Per category, twice how far the 200-threshold cflow-style AUPRO of ``maps`` moves when the maps move
    by up to ``map_atol`` (at least 1e-6): the largest change over ``draws`` seeded uniform perturbations in
    [-map_atol, map_atol] and the two one-sided ones (anomalous pixels down and anomaly-free ones up, and
    the reverse), doubled because both sides carry such noise (the official run behind a fixture as much
    as zsad).

    The tolerance for comparing the cflow AUPRO of zsad's *own* maps with the official one. Its thresholds
    are a grid of 200 steps over the category's score range, so every pixel within map noise of a step can
    flip: rerunning the official AnomalyCLIP code moved its maps by 1.8e-6 and this AUPRO by 1.65e-5 (one
    flip on its weave maps; the tolerance there is 3.5e-5). Maps as narrow as the random-weight AnoVL ones
    (0.465 to 0.503: a grid step of 1.9e-4) get tolerances of several 1e-3. The metric's definition is
    compared to 1e-6 on the official maps themselves (in the parity scripts, and in the tests where the
    fixture holds those maps)."""
    from lightning_modules.metrics import legacy_cflow_aupro

    maps = np.asarray(torch.as_tensor(maps).detach().float().cpu())
    masks = np.asarray(torch.as_tensor(masks).detach().cpu()) > 0.5
    category_ids = np.asarray(category_ids)
    rng = np.random.default_rng(0)
    tolerances = []
    for category in np.unique(category_ids):
        chosen, truth = maps[category_ids == category], masks[category_ids == category]
        reference = legacy_cflow_aupro(chosen, truth, fpr_limit=fpr_limit)
        shifts = [np.where(truth, -map_atol, map_atol), np.where(truth, map_atol, -map_atol)]
        shifts += [rng.uniform(-map_atol, map_atol, chosen.shape) for _ in range(draws)]
        moved = [
            abs(
                legacy_cflow_aupro((chosen + shift).astype(np.float32), truth, fpr_limit=fpr_limit)
                - reference
            )
            for shift in shifts
        ]
        tolerances.append(max(1e-6, 2 * max(moved)))
    return np.asarray(tolerances)


def cflow_aupro_agreement(official: Any, zsad: Any, maps: Any, masks: Any, category_ids: Any):
    """``(|official - zsad|, tolerance)`` per category for the cflow AUPRO of zsad's own maps (see
    :func:`cflow_aupro_tolerance`; categories in ascending id order, as the metric rows)."""
    delta = np.abs(np.asarray(official, dtype=np.float64) - np.asarray(zsad, dtype=np.float64))
    return delta, cflow_aupro_tolerance(maps, masks, category_ids)


def print_cflow_agreement(official: Any, zsad: Any, maps: Any, masks: Any, category_ids: Any) -> None:
    """The line the parity scripts print for the cflow AUPRO of zsad's own maps: |delta| per category
    against the tolerance that map noise allows on them (what the CI tests check)."""
    delta, tolerance = cflow_aupro_agreement(official, zsad, maps, masks, category_ids)
    verdict = "within" if (delta <= tolerance).all() else "OUTSIDE"
    print(
        f"    cflow AUPRO of zsad's maps: |delta| {', '.join(f'{d:.2e}' for d in delta)} {verdict} the "
        f"tolerance map noise of {MAPS_ATOL:g} allows on them, {', '.join(f'{t:.2e}' for t in tolerance)}"
    )


def json_line(method: str, deltas: dict[str, float]) -> str:
    """A parity script's last line: ``{"method": ..., "max_abs_delta": {quantity: value}}``."""
    return json.dumps({"method": method, "max_abs_delta": {k: float(v) for k, v in deltas.items()}})


def evaluator_metrics(
    categories, category_ids, scores, labels, maps, masks, image_score_rule=None, score_dtype=torch.float32
) -> dict[str, float]:
    """zsad's evaluator (exact AUPRO and cflow-style AUPRO included) on the given scores and maps:
    ``{category/metric: value}`` for every defined metric. ``image_score_rule``: the evaluator's per-category
    rule over ``[N, K]`` score components (Bayes-PFL's)."""
    from lightning_modules.metrics import AnomalyEvaluator

    evaluator = AnomalyEvaluator(categories=list(categories), image_score_rule=image_score_rule)
    evaluator.update(
        category_ids=torch.as_tensor(category_ids),
        sample_ids=torch.arange(len(labels)),
        image_scores=torch.as_tensor(scores).to(score_dtype),
        labels=torch.as_tensor(labels),
        anomaly_maps=torch.as_tensor(maps).float(),
        masks=torch.as_tensor(masks).float(),
        has_mask=torch.ones(len(labels), dtype=torch.bool),
    )
    result = evaluator.compute()
    return {
        f"{c}/{k}": v for c in result.categories for k, v in result.per_category[c].items() if v is not None
    }


def predict_into(evaluator: Any, module: Any, loader: Any) -> int:
    """zsad's test path on ``loader``: ``module.predict_batch`` per batch into ``evaluator`` (an
    AnomalyEvaluator, computed by the caller); returns the number of images (the speed scripts)."""
    count = 0
    for batch in loader:
        scores, maps = module.predict_batch(batch)
        evaluator.update(
            category_ids=batch["category_id"],
            sample_ids=batch["sample_id"],
            image_scores=scores,
            labels=batch["label"],
            anomaly_maps=maps,
            masks=batch["mask"],
            has_mask=batch["has_mask"],
        )
        count += len(scores)
    return count


def save_fixture(path: Path, **arrays: Any) -> Path:
    """Write ``arrays`` (numbers, strings, tensors) compressed to ``path`` and print its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: np.asarray(v.detach().cpu() if torch.is_tensor(v) else v) for k, v in arrays.items()}
    np.savez_compressed(path, **data)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


def load_fixture(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def mask_sums(masks: Any) -> np.ndarray:
    """Mask pixels per image: what a fixture keeps of the masks to show both sides read the same ones."""
    masks = np.asarray(masks)
    return masks.reshape(len(masks), -1).sum(1)


def input_record(state_dict: dict[str, torch.Tensor], root: Path, paths: Any, masks: Any) -> dict[str, Any]:
    """What a fixture records of its run's inputs, for :func:`parity_inputs` and the tests to check: the
    weights' and the images' fingerprints, the image paths in reading order and the masks' pixel counts."""
    return {
        "weights_fingerprint": weights_fingerprint(state_dict),
        "pixels_fingerprint": pixels_fingerprint(root),
        "paths": paths,
        "masks_sum": mask_sums(masks),
    }


def parity_inputs(
    folder: Path,
    fixture: dict[str, np.ndarray],
    state_dict: dict[str, torch.Tensor],
    write: Callable[[Path], Path] | None = None,
) -> Path:
    """Write the parity images under ``folder`` (``write(folder)`` returns their root) and check that they
    and the weights are those of the fixture's official run (else a comparison would mean nothing: rerun
    the parity script)."""
    root = (write or _mvtec_layout)(folder)
    if pixels_fingerprint(root) != str(fixture["pixels_fingerprint"]):
        raise AssertionError("the generated images differ from the fixture's: rerun the parity script")
    actual, expected = weights_fingerprint(state_dict), fixture["weights_fingerprint"]
    # Equal weights up to float32 rounding of their random init: a vectorised erfinv or exp (timm's
    # trunc_normal_) rounds its last bit differently on another instruction set (AVX2 / AVX-512), moving a
    # tensor's sum by ~1e-8 of its sum of |x|; other weights (another seed, shape or init) move it by far more.
    scale = np.maximum(np.abs(expected[:, 1:]), 1e-12)
    if actual.shape != expected.shape or (np.abs(actual - expected) > 1e-6 * scale).any():
        raise AssertionError("the parity weights differ from the fixture's: rerun the parity script")
    return root


def old_pillow_fromarray(fromarray):
    """``Image.fromarray`` as the authors' datasets need it (their module's ``Image.fromarray`` is replaced
    by it): Pillow < 11 accepted ``fromarray(float64 array, mode="L")`` and read the first bytes of its
    buffer (the authors' all-zero mask of a normal image: zeros either way); Pillow >= 11 refuses."""

    def wrapped(array, mode=None):
        array = np.asarray(array)
        if mode == "L" and array.dtype != np.uint8:
            array = np.frombuffer(array.tobytes(), np.uint8)[: array.size].reshape(array.shape)
        return fromarray(array, mode=mode)

    return wrapped


def parity_arguments(
    doc: str,
    official_help: str,
    official_env_help: str | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The command line every parity script shares: ``--official PATH`` (the authors' checkout),
    ``--write-fixture``, optionally ``--official-env`` (PYTHONPATH entries for the official side), and
    the internal flags with which the script runs its own official side in a subprocess; ``extra`` adds a
    script's own (optional) arguments."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if extra is not None:
        extra(parser)
    parser.add_argument("--official", type=Path, required=True, help=official_help)
    if official_env_help:
        parser.add_argument("--official-env", default="", help=official_env_help)
    parser.add_argument(
        "--write-fixture", action="store_true", help="store the official outputs as the test fixture"
    )
    parser.add_argument("--official-side", type=Path, help=argparse.SUPPRESS)  # internal: the subprocess
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def run_official_side(
    script: str,
    official: Path,
    root: Path,
    weights: dict[str, torch.Tensor],
    work: Path,
    pythonpath: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Run ``script``'s official side in a subprocess (its imports never mix with zsad's), with
    ``pythonpath`` first on its ``PYTHONPATH``; the weights travel as a state-dict file, the outputs come
    back as an ``.npz``."""
    weights_file, out = work / "weights.pt", work / "official.npz"
    torch.save(weights, weights_file)
    paths = [p for p in (*pythonpath, os.environ.get("PYTHONPATH", "")) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, script, "--official", str(official), "--official-side", str(out)]
    subprocess.run([*command, "--root", str(root), "--weights", str(weights_file)], check=True, env=env)
    return load_fixture(out)


def serve_official_side(args: argparse.Namespace, official_outputs: Callable[..., dict[str, Any]]) -> bool:
    """In the subprocess :func:`run_official_side` starts (``--official-side OUT``): write
    ``official_outputs(checkout, root, weights file)`` to OUT and return true; else return false."""
    if not args.official_side:
        return False
    save_fixture(args.official_side, **official_outputs(args.official.resolve(), args.root, args.weights))
    return True


def _mvtec_layout(folder: Path) -> Path:
    return write_parity_images(folder / "mvtec")


FEW_SHOT_TRAIN_IMAGES = 4  # normal training images per category of the few-shot parity images


def few_shot_layout(folder: Path) -> Path:
    """The parity images with :data:`FEW_SHOT_TRAIN_IMAGES` training images per category (few-shot parity)."""
    return write_parity_images(folder / "mvtec", n_train=FEW_SHOT_TRAIN_IMAGES)


REFERENCES_FILE = "references.json"  # beside the weights file: the few-shot references of the official side


def few_shot_then_official(
    args: argparse.Namespace,
    script: str,
    zsad_outputs: Callable[[Path], dict[str, np.ndarray]],
    weights: dict[str, torch.Tensor],
    pythonpath: tuple[str, ...] = (),
) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`zsad_then_official` on the few-shot parity images (:func:`few_shot_layout`): the references
    zsad's protocol drew (its outputs' ``categories`` and ``references``) are written beside the weights,
    where the official side reads them (:func:`official_references`)."""

    def zsad_then_write_references(root: Path) -> dict[str, np.ndarray]:
        ours = zsad_outputs(root)
        files = dict(zip(ours["categories"].tolist(), ours["references"].tolist(), strict=True))
        (root.parent / REFERENCES_FILE).write_text(json.dumps(files))
        return ours

    return zsad_then_official(args, script, zsad_then_write_references, weights, pythonpath, few_shot_layout)


def official_references(weights: Path) -> dict[str, list[str]]:
    """Per category the reference files (below the images root) zsad drew, on the official side."""
    return json.loads((weights.parent / REFERENCES_FILE).read_text())


def zsad_then_official(
    args: argparse.Namespace,
    script: str,
    zsad_outputs: Callable[[Path], dict[str, np.ndarray]],
    weights: dict[str, torch.Tensor],
    pythonpath: tuple[str, ...] = (),
    write: Callable[[Path], Path] = _mvtec_layout,
) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(images root, zsad's outputs, the official ones)``: the parity images written to a new folder
    (``write(folder)`` returns their root), zsad run on them in this process, then ``script``'s official
    side in a subprocess."""
    work = Path(tempfile.mkdtemp(prefix=f"zsad-{Path(script).stem}-"))
    root = write(work)
    ours = zsad_outputs(root)
    return root, ours, run_official_side(script, args.official, root, weights, work, pythonpath)


# --- shims for the official code of Qu et al. (VCP-CLIP, Bayes-PFL: the same CLIP and data code) --------
class CpuZeros:
    """``torch`` for the ViT module of Qu et al.'s CLIP code (VCP-CLIP, Bayes-PFL), except that ``zeros([H, H]).to('cuda')`` stays on the CPU."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if len(args) == 1 and isinstance(args[0], list):  # their unused attention sum

            class _Stay(torch.Tensor):
                def to(self, *a, **k):
                    return torch.Tensor(self)

            return torch.zeros(*args, **kwargs).as_subclass(_Stay)
        return torch.zeros(*args, **kwargs)


class RecordingCv2:
    """``cv2`` for Qu et al.'s data conversion (``make_VAND``): records which image file each written BMP comes from."""

    def __init__(self, cv2):
        self.cv2, self.last_image, self.sources = cv2, None, {}

    def __getattr__(self, name):
        return getattr(self.cv2, name)

    def imread(self, path, flags=None):
        if flags == self.cv2.IMREAD_COLOR:
            self.last_image = path
        return self.cv2.imread(path, flags)

    def imwrite(self, path, image, *args):
        if path.endswith(".bmp"):
            self.sources[os.path.abspath(path)] = self.last_image
        return self.cv2.imwrite(path, image, *args)


class Recorder:
    """Wraps a metric function: keeps (args, result) of every call."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        value = self.function(*args, **kwargs)
        self.calls.append((args, value))
        return value
