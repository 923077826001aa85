"""AnoVL's Lightning module: which word names a category in its prompts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dual_image_support import tiny_method_config

from datamodules.errors import ConfigError
from lightning_modules.anovl import AnoVL, AnoVLModule
from lightning_modules.anovl.module import image_seed

CATEGORIES = ["metal_nut", "macaroni1"]
DATAMODULE = SimpleNamespace(
    categories=CATEGORIES,
    category_folders=CATEGORIES,
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


def test_an_images_tta_seed_does_not_depend_on_where_the_dataset_lies(tiny_clip, tmp_path):
    """The per-image seeds (TTA initialisation and noise, the dual-image synthesis) are keyed by the image's
    path below the dataset root, as every stochastic method's draws (lightning_modules/stochastic.py): the
    same dataset at two roots gives every image the same seed, a rerun on a copy the same numbers."""
    seeds = []
    for root in (tmp_path / "a" / "mvtec", tmp_path / "elsewhere" / "copy"):
        built = module(tiny_clip)
        built.bind_data(SimpleNamespace(**{**vars(DATAMODULE), "full_index": _index(root)}))
        paths = [str(root / "metal_nut" / "test" / "good" / f"{i:03d}.png") for i in range(3)]
        seeds.append(built.image_seeds({"image_path": paths}))
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 3
    # the key is the relative path (salt and run seed as before): the seed of "metal_nut/test/good/000.png"
    assert seeds[0][0] == image_seed(module(tiny_clip).seed, "metal_nut/test/good/000.png")


def _index(root):
    return SimpleNamespace(prompt_names=DATAMODULE.full_index.prompt_names, root=root)


def test_folder_prompts_name_a_loco_rows_object_not_the_row(tiny_clip):
    rows = ["breakfast_box_logical", "breakfast_box_structural"]
    built = module(tiny_clip)
    built.bind_data(
        SimpleNamespace(
            categories=rows,
            category_folders=["breakfast_box", "breakfast_box"],
            domain="industrial",
            full_index=SimpleNamespace(prompt_names=lambda: dict.fromkeys(rows, "breakfast box"), root=None),
        )
    )
    assert [built.object_word(c) for c in rows] == ["breakfast_box", "breakfast_box"]
