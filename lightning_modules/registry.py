"""Method registry: name -> :class:`~lightning_modules.method_spec.MethodSpec`.

A method is a plain-torch model, a LightningModule and a typed config; its package's ``spec.py`` says so
in one :class:`MethodSpec`, and listing that spec below makes it usable by ``zsad train/test/run``, sweeps,
``zsad predict`` and the every-method test (docs/adding_a_method.md). Reading the registry imports the specs
and configs only: no torch, Lightning or open_clip.
"""

from __future__ import annotations

from datamodules.errors import ZsadError
from lightning_modules.aa_clip.spec import AA_CLIP
from lightning_modules.adaclip.spec import ADACLIP
from lightning_modules.adaptclip.spec import ADAPTCLIP
from lightning_modules.anomalyclip.spec import ANOMALYCLIP
from lightning_modules.anomalydino.spec import ANOMALYDINO
from lightning_modules.anovl.spec import ANOVL
from lightning_modules.bayes_pfl.spec import BAYES_PFL
from lightning_modules.clip_zero_shot.spec import CLIP, CLIP_AC
from lightning_modules.cmg.spec import CMG
from lightning_modules.coop.spec import COOP
from lightning_modules.dual_image.spec import DUAL_IMAGE
from lightning_modules.faprompt.spec import FAPROMPT
from lightning_modules.method_spec import MethodSpec
from lightning_modules.musc.spec import MUSC
from lightning_modules.vand.spec import VAND
from lightning_modules.vcp_clip.spec import VCP_CLIP
from lightning_modules.winclip.spec import WINCLIP

BUILTIN_METHODS: tuple[MethodSpec, ...] = (
    AA_CLIP,
    ADACLIP,
    ADAPTCLIP,
    ANOMALYCLIP,
    ANOMALYDINO,
    ANOVL,
    BAYES_PFL,
    CLIP,
    CLIP_AC,
    CMG,
    COOP,
    DUAL_IMAGE,
    FAPROMPT,
    MUSC,
    VAND,
    VCP_CLIP,
    WINCLIP,
)

_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method (the built-in ones are listed above; a plugin or a test may add its own)."""
    if spec.name in _METHODS:
        raise ValueError(f"method '{spec.name}' registered twice")
    _METHODS[spec.name] = spec
    return spec


for _spec in BUILTIN_METHODS:
    register_method(_spec)


def get_method(name: str) -> MethodSpec:
    try:
        return _METHODS[name]
    except KeyError:
        raise ZsadError(f"unknown method '{name}'; known: {', '.join(sorted(_METHODS))}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)
