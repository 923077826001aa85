"""One text per image for CMG: a user's caption when there is one, else a template of class and domain.

Captions file (``method.captions_file``): a JSON object ``{"bottle/train/good/000.png": "a clear glass
bottle seen from above", ...}`` or a CSV with the header ``image,caption``. Image paths are relative to the
dataset root (as the dataset is laid out on disk); absolute paths match as well. Images without a caption
(e.g. test images when only the training set was captioned) fall back to the template.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import ConfigError


def load_captions(path: str | Path) -> dict[str, str]:
    """``{image path: caption}`` from a JSON object or a CSV with columns ``image`` and ``caption``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"captions file not found: {path} (method.captions_file)")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ConfigError(f"{path}: a JSON captions file must be an object mapping image path -> caption")
        return {str(k): v for k, v in data.items()}
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ConfigError(f"{path}: a CSV captions file needs the header 'image,caption'")
            return {row["image"]: row["caption"] for row in reader}
    raise ConfigError(f"{path}: captions file must be .json or .csv")


class ImageTexts:
    """Resolves the text of each image of one dataset (captions first, then the template)."""

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str],
        prompt_names: Mapping[str, str],
        domain: str,
        template: str,
        captions: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.categories = list(categories)
        self.prompt_names = dict(prompt_names)
        self.domain = domain
        self.template = template
        self.captions = dict(captions or {})

    @classmethod
    def from_datamodule(cls, datamodule: Any, template: str, captions_file: str | None) -> ImageTexts:
        index = datamodule.full_index
        captions = load_captions(captions_file) if captions_file else None
        return cls(
            index.root, datamodule.categories, index.prompt_names(), datamodule.domain, template, captions
        )

    def caption(self, image_path: str | Path) -> str | None:
        """The user's caption of an image (by path relative to the root, or absolute), if any."""
        path = Path(image_path)
        if (
            path.is_relative_to(self.root)
            and (relative := path.relative_to(self.root).as_posix()) in self.captions
        ):
            return self.captions[relative]
        return self.captions.get(str(path))

    def text(self, image_path: str | Path, category: str) -> str:
        caption = self.caption(image_path)
        if caption is not None:
            return caption
        name = self.prompt_names.get(category, category.replace("_", " "))
        return self.template.format(name=name, domain=self.domain, category=category)

    def batch_texts(self, image_paths: Sequence[str], category_ids: torch.Tensor) -> list[str]:
        return [
            self.text(p, self.categories[int(c)])
            for p, c in zip(image_paths, category_ids.tolist(), strict=True)
        ]
