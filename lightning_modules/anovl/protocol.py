"""Which of the authors' evaluation scripts AnoVL follows on a dataset (docs/methods.md#anovl).

The authors evaluate MVTec AD with ``vl_test.py`` and VisA with another script, ``vis_test.py``, with
another protocol (short side to 240 without a crop, two overlapping square tiles, the tiles' class tokens
as image score, a ``D x D`` adapter for TTA; :mod:`lightning_modules.anovl.tiled_visa`).
``method.visa_protocol`` says which one VisA gets: the authors' (``vis_test``) by default, ``vl_test`` as a
deviation. A method that does not implement a protocol refuses it (Dual-Image: vis_test), so that no
result is silently another protocol. The choice is recorded with every target's results.

This module is the one place that decides it: the methods' specs (``spec.py``) give the runner the protocol
and the preprocessing of each target from here, and the runner tells the module which protocol it runs
(``ZeroShotModule.method_protocol``). It also says when an evaluation cannot be split over processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datamodules.errors import ConfigError
from lightning_modules.anovl.config import SEQUENTIAL_TTA_RESETS, AnoVLConfig

if TYPE_CHECKING:
    from datamodules.transforms import ImagePreprocessing

VL_TEST = "vl_test"  # vl_test.py: square resize, 22 views, prompt-span TextAdapter (MVTec AD)
VIS_TEST = "vis_test"  # vis_test.py: short side 240, two tiles, class-token score, D x D Adapter (VisA)
VISA_PROTOCOLS = (VIS_TEST, VL_TEST)
#: The datasets the authors published a script for, and which script.
AUTHORS_PROTOCOLS = {"mvtec": VL_TEST, "visa": VIS_TEST}


def check_visa_protocol(visa_protocol: str) -> None:
    if visa_protocol not in VISA_PROTOCOLS:
        raise ConfigError(
            f"method.visa_protocol must be one of {list(VISA_PROTOCOLS)}, got {visa_protocol!r}"
        )


def dataset_protocol(
    visa_protocol: str,
    dataset: str,
    *,
    method: str = "anovl",
    authors_code: bool = True,
    implemented: tuple[str, ...] = VISA_PROTOCOLS,
) -> dict[str, Any]:
    """The protocol ``method`` runs on ``dataset``, as results record it (``method_protocol``); raises
    :class:`ConfigError` for a protocol zsad does not implement. ``authors_code=False`` (Dual-Image, whose
    code is not public): the protocol is a reconstruction, not measured against an authors' script."""
    check_visa_protocol(visa_protocol)
    protocol = visa_protocol if dataset == "visa" else VL_TEST
    if protocol not in implemented:
        raise ConfigError(
            f"{method} on visa: method.visa_protocol={protocol} is AnoVL's authors' VisA protocol (vis_test.py: "
            "short side resized to 240 without a crop, two overlapping square tiles whose maps are averaged, "
            f"the tiles' class tokens as image score, a D x D adapter for TTA), which zsad does not implement "
            f"for {method}; set method.visa_protocol={VL_TEST} to run vl_test.py's protocol on VisA"
        )
    if not authors_code:
        return {"protocol": protocol, "authors_protocol": None, "reconstruction": True}
    authors_protocol = AUTHORS_PROTOCOLS.get(dataset)  # None: the authors published no script for it
    record: dict[str, Any] = {"protocol": protocol, "authors_protocol": authors_protocol}
    if authors_protocol is not None:
        record["deviation"] = protocol != authors_protocol
    return record


def anovl_protocol(cfg: AnoVLConfig, dataset: str) -> dict[str, Any]:
    """AnoVL's protocol on ``dataset`` (``method.visa_protocol`` on VisA, vl_test.py's elsewhere)."""
    return dataset_protocol(cfg.visa_protocol, dataset, method="anovl")


def protocol_preprocessing(protocol: str) -> ImagePreprocessing:
    """The authors' resize under ``protocol``: vl_test.py's ``Resize((S, S))`` (bilinear), or vis_test.py's
    ``Resize(S)``, the short side to S without a crop (bilinear)."""
    from datamodules.transforms import ImagePreprocessing

    if protocol == VIS_TEST:
        return ImagePreprocessing(interpolation="bilinear", resize="short_side")
    return ImagePreprocessing(interpolation="bilinear")


def sequential_tta_refusal(cfg: AnoVLConfig) -> str | None:
    """Why ``cfg`` cannot be evaluated over several processes (None when it can): the authors' TTA carries
    optimizer state from image to image of a category, in index order; split over processes, each would
    adapt on another subset and the scores would depend on the world size."""
    reset = cfg.tta.reset
    if not cfg.tta.enabled or reset not in SEQUENTIAL_TTA_RESETS:
        return None
    return (
        f"method.tta.reset={reset} adapts the images of a category one after another (the authors' "
        "protocol), which cannot be split over several processes: evaluate on one device "
        "(trainer.devices=1 trainer.num_nodes=1) or set method.tta.reset=image (order-independent)"
    )
