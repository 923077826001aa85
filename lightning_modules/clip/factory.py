"""Creating open_clip models offline.

Weights are never downloaded at run time on the clusters this targets, so a model is created from
(1) a local weights file, (2) a pretrained tag already in the Hugging Face / open_clip cache, or
(3) random weights when ``pretrained`` is null (tests and the demo). Anything else fails with one message
that says where to put the weights.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transformer import QuickGELU
from torch import nn

from datamodules.errors import WeightsNotFoundError, ZsadError

MLP_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
TINY_MODEL = "zsad-tiny-vit"  # registered below: random weights only, for tests and the demo
RANDOM_WEIGHTS = (None, "", "none", "random")
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


class _TinyRandomWeightsFilter(logging.Filter):
    """The tiny model has random weights by design; open_clip's warning about it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"No pretrained weights loaded for model '{TINY_MODEL}'")


def register_builtin_configs() -> None:
    """Make zsad's own architectures (the tiny test ViT) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        logging.getLogger().addFilter(_TinyRandomWeightsFilter())
        _registered = True


def _weights_hint(name: str, pretrained: str) -> str:
    try:
        cfg = open_clip.get_pretrained_cfg(name, pretrained)
    except Exception:  # noqa: BLE001 - only used to improve the message
        cfg = {}
    hub = cfg.get("hf_hub", "").rstrip("/") if cfg else ""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME", "~/.cache/huggingface") + "/hub"
    where = f"the Hugging Face cache ({cache}, repo {hub})" if hub else f"the open_clip cache ({cache})"
    return (
        f"CLIP weights '{name}' / '{pretrained}' are not available offline: download them where you have "
        f"internet and copy the file here, then set method.backbone.pretrained=/path/to/weights.bin "
        f"(or put them into {where})"
    )


def _require_cached(name: str, tag: str, cache_dir: str | None) -> None:
    try:
        path = open_clip.download_pretrained(open_clip.get_pretrained_cfg(name, tag), cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001 - hub and URL downloads raise many types when offline
        raise WeightsNotFoundError(_weights_hint(name, tag)) from error
    if not path or not Path(path).is_file():
        raise WeightsNotFoundError(_weights_hint(name, tag))


def create_clip(
    name: str,
    pretrained: str | None,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[open_clip.CLIP, open_clip.tokenizer.SimpleTokenizer]:
    """Return ``(model, tokenizer)`` in eval mode with every parameter frozen."""
    register_builtin_configs()
    if name not in open_clip.list_models():
        raise ZsadError(
            f"unknown CLIP architecture '{name}'; known include {TINY_MODEL}, ViT-L-14-336-quickgelu, "
            f"ViT-B-16-plus-240 (see open_clip.list_models())"
        )
    if isinstance(pretrained, str) and pretrained.lower() in RANDOM_WEIGHTS:
        pretrained = None
    if pretrained is not None and (
        "/" in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))
    ):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"CLIP weights file not found: {path}; set method.backbone.pretrained to an existing file "
                f"or to a pretrained tag such as 'openai' that is in your cache"
            )
        pretrained = str(path)
    elif pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise WeightsNotFoundError(
            f"'{pretrained}' is neither a file nor a pretrained tag of {name} (tags: {', '.join(tags) or 'none'})"
        )
    if pretrained is not None and not Path(pretrained).is_file():
        _require_cached(name, pretrained, cache_dir)  # fail before allocating a large random model
    try:
        model = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir, device=device)
    except (OSError, RuntimeError, ValueError) as error:
        if pretrained is None or Path(pretrained).is_file():
            raise ZsadError(f"cannot load CLIP '{name}' from {pretrained}: {error}") from error
        raise WeightsNotFoundError(_weights_hint(name, pretrained)) from error
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    return model, tokenizer


def _mlps(model: nn.Module) -> list[nn.Module]:
    """The MLPs of every transformer block of both towers (open_clip names their activation ``gelu``)."""
    return [m.mlp for m in model.modules() if isinstance(getattr(m, "mlp", None), nn.Sequential)]


def mlp_activation(model: nn.Module) -> str:
    """``"gelu"`` or ``"quick_gelu"``: the activation all of the model's transformer MLPs use."""
    kinds = set()
    for mlp in _mlps(model):
        kinds |= {name for name, layer in MLP_ACTIVATIONS.items() if type(mlp.gelu) is layer}
    if len(kinds) != 1:
        raise TypeError(f"expected one MLP activation among {list(MLP_ACTIVATIONS)}, found {sorted(kinds)}")
    return kinds.pop()


def with_mlp_activation(model: nn.Module, activation: str, in_place: bool = False) -> nn.Module:
    """The model with every transformer MLP of both towers using ``activation`` (weights unchanged).

    Exact GELU and QuickGELU (``x * sigmoid(1.702 x)``) have no weights, so this is how open_clip builds the
    same architecture with or without ``quick_gelu``. The model is returned as is when it already uses the
    activation; otherwise a copy is changed unless ``in_place`` (a model the caller owns alone).
    """
    if activation not in MLP_ACTIVATIONS:
        raise ZsadError(f"unknown MLP activation {activation!r}; known: {', '.join(MLP_ACTIVATIONS)}")
    if mlp_activation(model) == activation:
        return model
    if not in_place:
        model = copy.deepcopy(model)
    for mlp in _mlps(model):
        mlp.gelu = MLP_ACTIVATIONS[activation]()
    return model


def clip_with_activation(
    backbone: Any, clip_model: nn.Module | None, tokenizer: Any, activation: str | Callable[[nn.Module], str]
) -> tuple[nn.Module, Any, str]:
    """``(model, tokenizer, activation)``: the backbone's CLIP (created unless one is handed in) with every
    MLP running ``activation`` (a name, or a rule that picks one from the model). A model handed in may be
    shared (tests): it is copied rather than changed when its activation differs."""
    owned = clip_model is None
    if owned:
        clip_model, tokenizer = create_clip(backbone.name, backbone.pretrained, backbone.cache_dir)
    name = activation(clip_model) if callable(activation) else activation
    return with_mlp_activation(clip_model, name, in_place=owned), tokenizer, name
