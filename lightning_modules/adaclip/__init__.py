"""AdaCLIP: hybrid (static + dynamic) learnable prompts in both CLIP towers, HSF image score."""

from lightning_modules.adaclip.config import AdaCLIPConfig
from lightning_modules.adaclip.model import AdaCLIP, AdaCLIPOutput

__all__ = ["AdaCLIP", "AdaCLIPConfig", "AdaCLIPOutput"]
