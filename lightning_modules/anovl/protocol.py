"""Which of the authors' evaluation scripts AnoVL follows on a dataset (docs/methods.md#anovl).

The authors evaluate MVTec AD with ``vl_test.py`` and VisA with another script, ``vis_test.py``, with
another protocol (short side to 240 without a crop, two overlapping square tiles, the tiles' class tokens
as image score, a ``D x D`` adapter for TTA; :mod:`lightning_modules.anovl.vis_test`).
``method.visa_protocol`` says which one VisA gets: the authors' (``vis_test``) by default, ``vl_test`` as a
deviation. A method that does not implement a protocol refuses it (Dual-Image: vis_test), so that no
result is silently another protocol. The choice is recorded with every target's results.
"""

from __future__ import annotations

from typing import Any

from datamodules.errors import ConfigError

VL_TEST = "vl_test"  # vl_test.py: square resize, 22 views, prompt-span TextAdapter (MVTec AD)
VIS_TEST = "vis_test"  # vis_test.py: short side 240, two tiles, class-token score, D x D Adapter (VisA)
VISA_PROTOCOLS = (VIS_TEST, VL_TEST)
#: The datasets the authors published a script for, and which script.
AUTHORS_PROTOCOLS = {"mvtec": VL_TEST, "visa": VIS_TEST}


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
    if visa_protocol not in VISA_PROTOCOLS:
        raise ConfigError(
            f"method.visa_protocol must be one of {list(VISA_PROTOCOLS)}, got {visa_protocol!r}"
        )
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
