"""MuSc parity with DINOv2 and DINO backbones: the authors' examples/musc_main.py and zsad on the same seeded
random-weight tiny ViTs and image files.

    python benchmarks/parity_musc_dino.py --official /tmp/MuSc --official-env /tmp/musc-env \
        [--dinov2-hub /tmp/dinov2] [--write-fixture]

As benchmarks/parity_musc.py (the CLIP rows; the same checkout, environment and generated images), but their
``--backbone_name`` is ``dinov2_vitb14`` or ``dino_vitbase16``: their ``models/musc.py`` then loads the model
with ``models/backbone/_backbones.load`` (DINOv2 through ``torch.hub.load('facebookresearch/dinov2')``, DINO
from Meta's URL into their vendored ``vision_transformer.vit_base``), feeds it their own transform
(``Resize((S, S))``, ``CenterCrop``, ImageNet mean/std) and takes its DINOv2 / DINO branch of the feature
extraction. Runs, each with divide_num 1 and their RsCIN k_list of mvtec_ad (1, 2, 3):

- ``v2``: DINOv2's architecture at width 32, 2 blocks, patch 14, LayerScale, a 37 x 37 position embedding
  (zsad's ``zsad-tiny-dinov2``), at 112 px (8 x 8 patches: the embedding interpolated by their code's
  offset rule), ``--feature_layers 0 1``;
- ``v1``: DINO's ViT at width 32, 2 blocks, patch 16, a 14 x 14 position embedding (``zsad-tiny-dino``), at
  128 px (8 x 8), ``--feature_layers 0 1``;
- ``v1last``: the same with ``--feature_layers 0`` alone: their ``get_intermediate_layers(n=1)`` returns the
  last block only, which their code then reads as layer 0 (zsad's ``dino_blocks``).

What is changed on the official side, and why (no number changes):

- ``_backbones.load`` returns the tiny model built from the authors' model code with the parity weights:
  DINOv2 from their vendored ``models/backbone/dino_vision_transformer.py`` (``DinoVisionTransformer`` with
  ``block_chunks=0``, as the torch-hub ``dinov2_vit*14`` builders; the hub code itself is downloaded at run
  time; the vendored copy has the same ``interpolate_pos_encoding``, ``get_intermediate_layers`` and
  ``forward``), DINO from ``models/backbone/vision_transformer.py`` (``VisionTransformer`` as their
  ``vit_base``, at width 32);
- with ``--dinov2-hub CHECKOUT`` (of facebookresearch/dinov2) the DINOv2 model is built from that checkout's
  ``dinov2/models/vision_transformer.py`` with the hub builders' arguments instead: the code their
  ``torch.hub.load`` runs (nothing is downloaded here);
- their class list is the generated categories; CUDA is hidden (CPU, float32; their autocast is CUDA-only).

A full-size check besides (printed only): their vendored ViT-B/14 (DINOv2, built as the hub's
``dinov2_vitb14``) and ViT-B/16 (DINO, their ``vit_base``) with seeded random weights, saved in Meta's
checkpoint format and read by zsad's encoder from that file through timm's ``checkpoint_filter_fn`` (as
``dino.pretrained=/path/to/dinov2_vitb14_pretrain.pth`` does), tokens of layers 2 5 8 11 and the class token at
336 / 256 px.

The weights: the tiny ViTs' seeded random init (``torch.manual_seed(WEIGHTS_SEED)``), LayerScale gammas in
0.5..1.5, the position embedding scaled by 10 (timm's init, 1e-5 and 0.02, would leave the blocks and the
positions nearly unused, and the interpolation untested) and the attention's qkv weights by 20 (sharp
attention: the class token then depends on the image; with timm's init every image's normalised class token
is nearly the same, and RsCIN's top-k neighbours tie within float rounding, so either side's rounding picks
them), the same state dict loaded into both sides.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import parity_musc as pm  # noqa: E402
import parity_support as ps  # noqa: E402
import torch  # noqa: E402

FIXTURE = ps.FIXTURES / "musc_dino.npz"
# tag -> (their backbone_name, zsad's family, tiny model, input size, feature layers)
RUNS = {
    "v2": ("dinov2_vitb14", "dinov2", "zsad-tiny-dinov2", 112, [0, 1]),
    "v1": ("dino_vitbase16", "dino", "zsad-tiny-dino", 128, [0, 1]),
    "v1last": ("dino_vitbase16", "dino", "zsad-tiny-dino", 128, [0]),
}
MAP_SAMPLES = np.s_[:, ::8, ::8]
# --dinov2-hub reaches the official side (a subprocess) through this environment variable
HUB_VARIABLE = "ZSAD_PARITY_DINOV2_HUB"
TOKEN_IMAGES = 4  # the fixture keeps the first images' patch tokens of every layer


def model_state(tiny: str) -> dict[str, torch.Tensor]:
    from lightning_modules.dino.encoder import TINY_MODELS

    torch.manual_seed(ps.WEIGHTS_SEED)
    state = TINY_MODELS[tiny]().state_dict()
    generator = torch.Generator().manual_seed(ps.WEIGHTS_SEED)
    for name, value in state.items():
        if name.endswith(".gamma"):
            state[name] = 0.5 + torch.rand(value.shape, generator=generator)
        if name.endswith("attn.qkv.weight"):
            state[name] = value * 20
    state["pos_embed"] = state["pos_embed"] * 10
    return state


def state_dict() -> dict[str, torch.Tensor]:
    """Both tiny ViTs' weights, keys prefixed by the tiny model's name (one file, one fingerprint)."""
    return {
        f"{tiny}.{k}": v
        for tiny in ("zsad-tiny-dinov2", "zsad-tiny-dino")
        for k, v in model_state(tiny).items()
    }


def split_state(weights: dict[str, torch.Tensor], tiny: str) -> dict[str, torch.Tensor]:
    return {k[len(tiny) + 1 :]: v for k, v in weights.items() if k.startswith(f"{tiny}.")}


def zsad_config(tag: str, **overrides):
    from lightning_modules.dino.config import DinoBackboneConfig
    from lightning_modules.musc.config import MuScConfig

    _, family, tiny, size, layers = RUNS[tag]
    cfg = MuScConfig(
        backbone_family=family,
        dino=DinoBackboneConfig(name=tiny, pretrained=None, image_size=size, interpolate_offset=0.1),
        feature_layers=list(layers),
    )
    for key, value in overrides.items():
        target = cfg.dino if hasattr(cfg.dino, key) and not hasattr(cfg, key) else cfg
        setattr(target, key, value)
    return cfg


def zsad_outputs(root: Path, tags=tuple(RUNS), cfg=None) -> dict[str, np.ndarray]:
    """zsad per run: pm.zsad_outputs with the tiny ViT of the run (divide_num 1), keys prefixed by the tag."""
    from lightning_modules.dino.encoder import TINY_MODELS
    from lightning_modules.musc.model import MuSc

    weights = state_dict()
    result: dict[str, Any] = {}
    for tag in tags:
        run_cfg = cfg or zsad_config(tag)
        tiny = RUNS[tag][2]
        vit = TINY_MODELS[tiny]()
        vit.load_state_dict(split_state(weights, tiny))
        model = MuSc(run_cfg, dino_model=vit.eval().requires_grad_(False))
        out = pm.zsad_outputs(root, run_cfg, model, divide_nums=(1,))
        result["categories"] = out["categories"]
        for key in ("paths", "images", "masks", "embeddings", "scores", "maps", "metrics"):
            result[f"{tag}_{key}"] = out[f"d1_{key}"]
        result[f"{tag}_tokens"] = out["d1_layer_tokens"][:, :, 1:]  # patch tokens (theirs: no class token)
    return result


# --- the official side (a subprocess, working directory = the checkout) --------------------------------
def official_model(tiny: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The tiny ViT built from their vendored code, as the builder their ``_backbones.load`` reaches."""
    import functools

    hub = os.environ.get(HUB_VARIABLE)
    if tiny == "zsad-tiny-dinov2" and hub:
        # the code their torch.hub.load('facebookresearch/dinov2', name) runs: dinov2/hub/backbones.py's
        # _make_dinov2_model arguments (torch.hub puts the repository first on sys.path, as here)
        sys.path.insert(0, hub)
        from dinov2.models.vision_transformer import DinoVisionTransformer

        model = DinoVisionTransformer(
            img_size=518, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
            init_values=1e-5, ffn_layer="mlp", block_chunks=0, num_register_tokens=0,
            interpolate_antialias=False, interpolate_offset=0.1,
        )  # fmt: skip
        state = {**state, "mask_token": model.mask_token.detach().clone()}
    elif tiny == "zsad-tiny-dinov2":
        import models.backbone.dino_vision_transformer as dino_vits

        model = dino_vits.DinoVisionTransformer(
            img_size=518, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
            init_values=1e-5, block_chunks=0,
        )  # fmt: skip
        state = {**state, "mask_token": model.mask_token.detach().clone()}
    else:
        import models.backbone.vision_transformer as vits

        model = vits.VisionTransformer(
            img_size=[224], patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, qkv_bias=True,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), num_classes=0,
        )  # fmt: skip
    model.load_state_dict(state, strict=True)
    for p in model.parameters():
        p.requires_grad = False
    return model.eval()


def official_outputs(official: Path, root: Path, weights_file: Path) -> dict[str, np.ndarray]:
    os.chdir(official)
    sys.path.insert(0, str(official))
    import models.backbone._backbones as backbones
    import models.musc as musc
    from datasets.mvtec import MVTecDataset

    weights = torch.load(weights_file, weights_only=True)
    result: dict[str, Any] = {}
    for tag, (backbone_name, _, tiny, size, layers) in RUNS.items():
        features_list = [layer + 1 for layer in layers]  # models/musc.py

        def model_patch(tokens: list, tiny=tiny, features_list=features_list, expected=backbone_name):
            def load(name):
                assert name == expected, name
                model = official_model(tiny, split_state(weights, tiny))
                intermediate = model.get_intermediate_layers

                def recorded_intermediate(*args, **kwargs):
                    out = intermediate(*args, **kwargs)
                    if "dinov2" in name:  # the features_list blocks, patch tokens only
                        tokens.append(torch.stack([o.detach().clone() for o in out]))
                    else:  # the last max(features_list) blocks, class token first: models/musc.py's indexing
                        picked = [out[layer - 1][:, 1:] for layer in features_list]
                        tokens.append(torch.stack([o.detach().clone() for o in picked]))
                    return out

                model.get_intermediate_layers = recorded_intermediate
                return model

            return backbones, "load", load

        output_dir = weights_file.parent / "official_output"
        run = pm.run_their_main(
            musc, MVTecDataset, root, model_patch, backbone_name, size, 1, layers, output_dir, tokens_dim=1
        )
        result |= {f"{tag}_{key}": value for key, value in run.items()}
    return result | official_full_size(weights_file.parent)


# Full-size check (printed, not in the fixture): their vendored ViT-B/14 (DINOv2, as the hub's dinov2_vitb14)
# and ViT-B/16 (DINO, their vit_base) with seeded random weights saved in Meta's checkpoint format, read by
# zsad's encoder from that file (timm's checkpoint filter), at their scripts' sizes and layers 2 5 8 11
FULL_SIZE = {
    "v2": ("dinov2_vitb14_pretrain.pth", "vit_base_patch14_dinov2", 336),
    "v1": ("dino_vitbase16_pretrain.pth", "vit_base_patch16_224", 256),
}
FULL_LAYERS = [2, 5, 8, 11]


def full_size_input(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(ps.WEIGHTS_SEED))


def official_full_size(folder: Path) -> dict[str, np.ndarray]:
    import models.backbone.dino_vision_transformer as dino_vits
    import models.backbone.vision_transformer as vits

    out: dict[str, np.ndarray] = {}
    for tag, (file, _, size) in FULL_SIZE.items():
        torch.manual_seed(ps.WEIGHTS_SEED)
        if tag == "v2":
            model = dino_vits.vit_base(patch_size=14, img_size=518, init_values=1.0, block_chunks=0)
        else:
            model = vits.vit_base(patch_size=16, num_classes=0)
        state = model.state_dict()
        generator = torch.Generator().manual_seed(ps.WEIGHTS_SEED)
        for name, value in state.items():
            if name.endswith("gamma"):
                state[name] = torch.rand(value.shape, generator=generator)
            if name == "pos_embed":
                state[name] = value + torch.randn(value.shape, generator=generator)
        model.load_state_dict(state)
        torch.save(state, folder / file)
        x = full_size_input(size)
        with torch.no_grad():
            if tag == "v2":
                tokens = model.eval().get_intermediate_layers(x, n=FULL_LAYERS)
            else:
                every = model.eval().get_intermediate_layers(x, n=max(FULL_LAYERS) + 1)
                tokens = [every[layer][:, 1:] for layer in FULL_LAYERS]
            out[f"full_{tag}_tokens"] = torch.stack(list(tokens)).numpy()
            out[f"full_{tag}_class"] = model(x).numpy()
    return out


def zsad_full_size(folder: Path) -> dict[str, np.ndarray]:
    from lightning_modules.dino.config import DinoBackboneConfig
    from lightning_modules.dino.encoder import DinoEncoder
    from lightning_modules.musc.features import dino_blocks

    out: dict[str, np.ndarray] = {}
    for tag, (file, name, size) in FULL_SIZE.items():
        cfg = DinoBackboneConfig(
            name=name, pretrained=str(folder / file), image_size=size, interpolate_offset=0.1
        )
        encoder = DinoEncoder(cfg)
        blocks = dino_blocks("dinov2" if tag == "v2" else "dino", FULL_LAYERS, encoder.depth)
        tokens, class_token = encoder.layer_tokens(full_size_input(size), blocks)
        out[f"full_{tag}_tokens"] = torch.stack([t[:, 1:] for t in tokens]).numpy()
        out[f"full_{tag}_class"] = class_token.numpy()
    return out


COMPARED = pm.COMPARED


def main() -> None:
    args = ps.parity_arguments(
        __doc__,
        "checkout of xrli-U/MuSc",
        "PYTHONPATH entries for the official side (scikit-image, openpyxl)",
        lambda parser: parser.add_argument(
            "--dinov2-hub",
            type=Path,
            help="checkout of facebookresearch/dinov2: the DINOv2 runs build the model from it (the code their "
            "torch.hub.load runs) instead of their vendored copy",
        ),
    )
    if ps.serve_official_side(args, official_outputs):
        return
    if args.dinov2_hub:
        os.environ[HUB_VARIABLE] = str(args.dinov2_hub.resolve())
    weights = state_dict()
    root, ours, theirs = ps.zsad_then_official(
        args, __file__, zsad_outputs, weights, (args.official_env,), write=pm.write_images
    )
    print(f"MuSc (DINO / DINOv2): {args.official} vs zsad, categories {list(ours['categories'])}")
    deltas: dict[str, float] = {}
    for tag in RUNS:
        if not np.array_equal(theirs[f"{tag}_paths"], ours[f"{tag}_paths"]):
            raise SystemExit(
                f"{tag}: another image order: {theirs[f'{tag}_paths']} vs {ours[f'{tag}_paths']}"
            )
        for name in COMPARED:
            deltas[f"{tag}_{name}"] = ps.print_delta(
                f"{tag} {name}", theirs[f"{tag}_{name}"], ours[f"{tag}_{name}"]
            )
        for c, category in enumerate(ours["categories"]):
            values = ", ".join(
                f"{m} {v:.6f}" for m, v in zip(pm.METRICS, theirs[f"{tag}_metrics"][c], strict=True)
            )
            print(f"  authors, {tag}, {category}: {values}")
    full = zsad_full_size(root.parent)
    for name in sorted(full):
        deltas[name] = ps.print_delta(name.replace("_", " "), theirs[name], full[name])
    if args.write_fixture:
        stored: dict[str, Any] = {}
        for tag in RUNS:
            stored |= {f"{tag}_{k}": theirs[f"{tag}_{k}"] for k in ("paths", "scores", "labels", "metrics")}
            stored[f"{tag}_embeddings"] = theirs[f"{tag}_embeddings"]
            stored[f"{tag}_tokens_sampled"] = theirs[f"{tag}_tokens"][:, :TOKEN_IMAGES]
            stored[f"{tag}_maps_sampled"] = theirs[f"{tag}_maps"][MAP_SAMPLES].astype(np.float32)
            stored[f"{tag}_masks_sum"] = ps.mask_sums(theirs[f"{tag}_masks"])
        first = next(iter(RUNS))
        ps.save_fixture(
            FIXTURE,
            **ps.input_record(weights, root, theirs[f"{first}_paths"], theirs[f"{first}_masks"]),
            categories=ours["categories"],
            **stored,
        )
    print(ps.json_line("musc_dino", deltas))


if __name__ == "__main__":
    main()
