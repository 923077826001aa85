"""AnoVL's Lightning module: which word names a category in its prompts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dual_image_support import tiny_method_config

from datamodules.errors import ConfigError
from lightning_modules.anovl import AnoVL, AnoVLModule

CATEGORIES = ["metal_nut", "macaroni1"]
DATAMODULE = SimpleNamespace(
    categories=CATEGORIES,
    domain="industrial",
    full_index=SimpleNamespace(prompt_names=lambda: {"metal_nut": "metal nut", "macaroni1": "macaroni"}),
)


def module(tiny_clip, **overrides) -> AnoVLModule:
    cfg = tiny_method_config("anovl_tiny", **overrides)
    built = AnoVLModule(cfg, model=AnoVL(cfg, *tiny_clip))
    built.bind_data(DATAMODULE)
    return built


def test_prompts_name_the_folder_as_the_authors_meta_json_by_default(tiny_clip):
    """The authors' cls_name is the folder name ("metal_nut"), except their class_mapping (macaroni1/2)."""
    assert [module(tiny_clip).object_word(c) for c in CATEGORIES] == ["metal_nut", "macaroni"]


def test_object_word_prompts_use_the_datasets_prompt_names(tiny_clip):
    words = module(tiny_clip, prompt_words="object_word")
    assert [words.object_word(c) for c in CATEGORIES] == ["metal nut", "macaroni"]


def test_an_unknown_prompt_words_value_is_a_config_error(tiny_clip):
    with pytest.raises(ConfigError, match="prompt_words"):
        module(tiny_clip, prompt_words="names")
