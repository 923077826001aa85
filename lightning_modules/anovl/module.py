"""AnoVL evaluation in Lightning (training-free; test-time adaptation inside the test loop)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import ConfigError
from lightning_modules.anovl.config import AnoVLConfig
from lightning_modules.anovl.model import AnoVL, BatchText, CategoryText
from lightning_modules.anovl.prompts import AUTHORS_CLASS_MAPPING, prompt_kind
from lightning_modules.anovl.protocol import VIS_TEST, VL_TEST, check_visa_protocol
from lightning_modules.anovl.tiled_visa import TiledAdaptation, vis_test_predict
from lightning_modules.anovl.tta import TestTimeAdaptation
from lightning_modules.base import ZeroShotModule
from lightning_modules.clip.prompts import PROMPT_WORDS
from lightning_modules.eval_config import EvalConfig
from lightning_modules.stochastic import image_keys, key_source


def image_seed(seed: int, image_path: str, salt: int = 0) -> int:
    """A per-image seed from the run's seed and the image's path (below the dataset root, see
    :meth:`AnoVLModule.image_seeds`): independent of batching, of the process that evaluates the image and
    of the folder the dataset lies in."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{salt}:{image_path}".encode())) % (2**63 - 1)


class AnoVLModule(ZeroShotModule):
    """Text branch (+ TTA) per batch; the text features of each category are computed once per test epoch."""

    method_name = "anovl"
    model_class: type[AnoVL] = AnoVL

    def __init__(
        self, cfg: AnoVLConfig, eval_cfg: EvalConfig | None = None, model: AnoVL | None = None
    ) -> None:
        super().__init__(eval_cfg)
        if cfg.prompt_words not in PROMPT_WORDS:
            raise ConfigError(
                f"method.prompt_words must be one of {list(PROMPT_WORDS)}, got {cfg.prompt_words!r}"
            )
        self.cfg = cfg
        check_visa_protocol(cfg.visa_protocol)  # a wrong value fails here, before the model is built
        self.model = model if model is not None else self.model_class(cfg)
        # The runner seeds torch (L.seed_everything(experiment seed)) right before building the module.
        self.seed = int(cfg.seed) if cfg.seed is not None else int(torch.initial_seed())
        self.tta = TestTimeAdaptation(cfg.tta, cfg.pixel_temperature) if cfg.tta.enabled else None
        self.tiled_tta = TiledAdaptation(cfg.tta) if cfg.tta.enabled else None  # vis_test.py's
        self._categories: list[str] = []
        self._folders: dict[str, str] = {}  # category -> its folder (MVTec LOCO's rows: the object's)
        self._object_names: dict[str, str] = {}
        self._domain = "industrial"
        self._image_root: Path | None = None  # the target's root: image seeds key paths below it
        self._keys_by_content = False
        self._texts: dict[str, CategoryText] = {}

    @property
    def protocol(self) -> str:
        """The authors' script whose protocol runs on the target under test (protocol.py): what the runner
        set in :attr:`method_protocol`, vl_test.py's when nothing was set."""
        return (self.method_protocol or {}).get("protocol", VL_TEST)

    # --- data binding ------------------------------------------------------------------------------
    def bind_data(self, datamodule: Any) -> None:
        """Read what scoring needs from the datamodule; drop what belonged to a previous target."""
        self._categories = list(datamodule.categories)
        self._folders = dict(zip(self._categories, datamodule.category_folders, strict=True))
        self._object_names = datamodule.full_index.prompt_names()
        self._domain = datamodule.domain
        self._image_root, self._keys_by_content = key_source(datamodule)  # content: zsad predict's inputs
        self._texts.clear()
        for tta in (self.tta, self.tiled_tta):
            if tta is not None:
                tta.reset()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.bind_data(self.trainer.datamodule)

    def object_word(self, category: str) -> str:
        """What names the category in its prompts (``method.prompt_words``)."""
        if self.cfg.prompt_words == "folder":
            folder = self._folders.get(category, category)
            return AUTHORS_CLASS_MAPPING.get(folder, folder)
        return self._object_names.get(category, category.replace("_", " "))

    def category_text(self, category: str) -> CategoryText:
        if category not in self._texts:
            name = self.object_word(category)
            kind = prompt_kind(category, name, self._domain, self.cfg.texture_categories)
            self._texts[category] = self.model.category_text(name, kind)
        return self._texts[category]

    def batch_categories(self, batch: dict[str, Any]) -> list[str]:
        return [self._categories[i] for i in batch["category_id"].tolist()]

    def image_seeds(self, batch: dict[str, Any], salt: int = 0) -> list[int]:
        """Each image's seed from its path below the bound target's root (lightning_modules/stochastic.py's
        keys), so a copy of the dataset elsewhere gives the same numbers; ``zsad predict``'s inputs: from
        the file's content."""
        keys = image_keys("", list(batch["image_path"]), self._image_root, self._keys_by_content)
        return [image_seed(self.seed, relative, salt) for _, relative in keys]

    def batch_text(self, categories: Sequence[str]) -> BatchText:
        return BatchText.stack([self.category_text(c) for c in categories])

    # --- evaluation --------------------------------------------------------------------------------
    def extra_inputs(self, batch: dict[str, Any], categories: list[str]) -> dict[str, Any]:
        """What subclasses add to ``model.predict`` (the dual-image method: the visual reference map)."""
        return {}

    def predict_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        categories = self.batch_categories(batch)
        if self.protocol == VIS_TEST:
            generators = [torch.Generator().manual_seed(s) for s in self.image_seeds(batch)]
            scores, _, maps = vis_test_predict(
                self.model,
                batch["image"],
                self.batch_text(categories).classes,
                tuple(batch["mask"].shape[-2:]),
                self.tiled_tta,
                generators,
                categories,
            )
            return scores, maps
        return self.model.predict(
            batch["image"],
            self.batch_text(categories),
            size=tuple(batch["mask"].shape[-2:]),
            tta=self.tta,
            seeds=self.image_seeds(batch),
            categories=categories,
            **self.extra_inputs(batch, categories),
        )
