"""Method registry: name -> (config dataclass, LightningModule class, what it needs).

A method is a plain-torch model, a LightningModule and a typed config; registering it here makes it
usable by ``zsad train/test/run`` and in sweeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from datamodules.errors import ZsadError


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    config_class: type
    build_module: Callable[[Any, Any], Any]  # (method config, EvalConfig) -> ZeroShotModule
    trains: bool
    needs: str  # e.g. "image labels + masks of the auxiliary data"
    description: str = ""
    # (method config, dataset name) -> what that target's results record as the method's protocol
    # (``method_protocol``); raises ConfigError for a protocol the method does not implement there.
    dataset_protocol: Callable[[Any, str], dict[str, Any]] | None = None


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _METHODS:
        raise ValueError(f"method '{spec.name}' registered twice")
    _METHODS[spec.name] = spec
    return spec


def _load_builtin_methods() -> None:
    import lightning_modules.anomalyclip  # noqa: F401
    import lightning_modules.anovl  # noqa: F401
    import lightning_modules.bayes_pfl  # noqa: F401
    import lightning_modules.clip_zero_shot  # noqa: F401
    import lightning_modules.cmg  # noqa: F401
    import lightning_modules.coop  # noqa: F401
    import lightning_modules.dual_image  # noqa: F401
    import lightning_modules.vand  # noqa: F401
    import lightning_modules.vcp_clip  # noqa: F401
    import lightning_modules.winclip  # noqa: F401


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise ZsadError(f"unknown method '{name}'; known: {', '.join(sorted(_METHODS))}") from None


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(_METHODS)
