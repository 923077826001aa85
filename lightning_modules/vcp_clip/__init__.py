"""VCP-CLIP: visual context prompting (pre-VCP image-conditioned prompts, post-VCP text refinement)."""

from lightning_modules.registry import MethodSpec, register_method
from lightning_modules.vcp_clip.config import VCPCLIPConfig
from lightning_modules.vcp_clip.model import VCPCLIP, VCPCLIPOutput
from lightning_modules.vcp_clip.module import VCPCLIPModule

register_method(
    MethodSpec(
        name="vcp_clip",
        config_class=VCPCLIPConfig,
        build_module=lambda cfg, eval_cfg: VCPCLIPModule(cfg, eval_cfg),
        trains=True,
        needs="pixel masks of the auxiliary data (no image loss)",
        description="VCP-CLIP: image-conditioned prompts (pre-VCP), texts refined by patch tokens (post-VCP)",
    )
)

__all__ = ["VCPCLIP", "VCPCLIPConfig", "VCPCLIPModule", "VCPCLIPOutput"]
