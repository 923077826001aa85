"""VCP-CLIP: visual context prompting (pre-VCP image-conditioned prompts, post-VCP text refinement).

The spec (``spec.py``) and the config load without torch; the model and module classes below are imported
on first use.
"""

from __future__ import annotations

from typing import Any

from lightning_modules.vcp_clip.config import VCPCLIPConfig

__all__ = ["VCPCLIP", "VCPCLIPConfig", "VCPCLIPModule", "VCPCLIPOutput"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from lightning_modules.vcp_clip.model import VCPCLIP, VCPCLIPOutput
    from lightning_modules.vcp_clip.module import VCPCLIPModule

    return {"VCPCLIP": VCPCLIP, "VCPCLIPModule": VCPCLIPModule, "VCPCLIPOutput": VCPCLIPOutput}[name]
