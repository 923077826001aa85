"""VAND as the authors' code runs it: exact GELU away from the native size, fp16 autocast on CUDA only,
folder names in the prompts, and the mosaic of full-size originals (each against a reference written here)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from baselines_support import one_torch_thread, tiny_backbone  # noqa: F401 - autouse fixture
from open_clip.transformer import QuickGELU
from PIL import Image
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.clip.factory import mlp_activation
from lightning_modules.mosaic import SameCategoryMosaic
from lightning_modules.vand import VAND, VANDConfig, VANDModule


def _vand(tiny_clip, image_size: int, **overrides) -> VAND:
    model, tokenizer = tiny_clip
    cfg = VANDConfig(backbone=tiny_backbone(image_size), feature_layers=[3, 6], **overrides)
    return VAND(cfg, model, tokenizer)


class _ErfGELU(nn.Module):
    """Exact GELU written out: x * Phi(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def test_authors_activation_is_exact_gelu_away_from_the_native_size(tiny_clip):
    model, _ = tiny_clip  # zsad-tiny-vit: QuickGELU, native 32 px
    assert VANDConfig().activation == "authors"
    at_48 = _vand(tiny_clip, 48)
    assert at_48.activation == "gelu" and mlp_activation(at_48.clip) == "gelu"
    blocks = list(at_48.clip.visual.transformer.resblocks) + list(at_48.clip.transformer.resblocks)
    assert all(type(block.mlp.gelu) is nn.GELU and block.mlp.gelu.approximate == "none" for block in blocks)
    assert mlp_activation(model) == "quick_gelu"  # the shared model handed in is left alone (copied)
    assert _vand(tiny_clip, 32).activation == "quick_gelu"  # native size: the weights' own, as the authors'
    assert _vand(tiny_clip, 48, activation="quick_gelu").activation == "quick_gelu"

    # the encoder really runs x * Phi(x): same class token as open_clip's tower with the activation swapped
    reference = _vand((copy.deepcopy(model), tiny_clip[1]), 48, activation="quick_gelu")
    for block in list(reference.clip.visual.transformer.resblocks) + list(
        reference.clip.transformer.resblocks
    ):
        assert type(block.mlp.gelu) is QuickGELU
        block.mlp.gelu = _ErfGELU()
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = at_48.vision(images).class_token
        torch.testing.assert_close(got, reference.vision(images).class_token, atol=1e-6, rtol=1e-6)
        quick = _vand(tiny_clip, 48, activation="quick_gelu").vision(images).class_token
    assert (got - quick).abs().max() > 1e-4  # and it is not QuickGELU
    with pytest.raises(ConfigError, match="method.activation"):
        _vand(tiny_clip, 48, activation="relu")


def test_fp16_autocast_changes_nothing_on_cpu(tiny_clip):
    """The authors' torch.cuda.amp.autocast() is disabled without CUDA, so their CPU runs are fp32: same here."""
    on, off = _vand(tiny_clip, 32), _vand(tiny_clip, 32, fp16_autocast=False)
    off.heads.load_state_dict(on.heads.state_dict())
    for vand in (on, off):
        vand.set_classes(["metal_nut"])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = torch.zeros(2, dtype=torch.long)
    first, second = on(images, ids, (16, 16)), off(images, ids, (16, 16))
    assert on.class_text.dtype == torch.float32 and first.pixel_probs[0].dtype == torch.float32
    assert torch.equal(on.class_text, off.class_text)
    for a, b in zip(first.pixel_probs, second.pixel_probs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast applies on CUDA only")
def test_fp16_autocast_on_cuda_runs_heads_in_half_and_the_loss_in_float(tiny_clip):
    vand, plain = (_vand(tiny_clip, 32, fp16_autocast=flag).cuda() for flag in (True, False))
    seen = {}
    vand.heads[0].register_forward_hook(lambda m, i, o: seen.setdefault("autocast", o.dtype))
    plain.heads[0].register_forward_hook(lambda m, i, o: seen.setdefault("fp32", o.dtype))
    images = torch.randn(2, 3, 32, 32, device="cuda")
    ids = torch.zeros(2, dtype=torch.long, device="cuda")
    for model in (vand, plain):
        model.set_classes(["metal_nut"])
        features = model.encode_images(images)
        expected = torch.float16 if model is vand else torch.float32
        assert features["image_embedding"].dtype == expected  # stored as the authors' in-place /= norm
        output = model(images, ids, (16, 16))
        assert output.pixel_probs[0].dtype == torch.float32  # softmax autocasts to float32
        assert model.loss(output, torch.zeros(2, 16, 16, device="cuda")).dtype == torch.float32
    assert seen == {"autocast": torch.float16, "fp32": torch.float32}


def test_prompts_use_folder_names_by_default(tiny_clip):
    """The authors' prompts format the meta.json cls_name, i.e. the folder: 'a photo of a damaged metal_nut.'"""
    calls = []
    module = VANDModule(VANDConfig(backbone=tiny_backbone(), feature_layers=[3]), model=_vand(tiny_clip, 32))
    module.model.set_classes = calls.append
    datamodule = SimpleNamespace(
        categories=["metal_nut", "pipe_fryum"],
        category_folders=["metal_nut", "pipe_fryum"],
        full_index=SimpleNamespace(
            prompt_names=lambda: {"metal_nut": "metal nut", "pipe_fryum": "pipe fryum"}
        ),
    )
    module.__dict__["_trainer"] = SimpleNamespace(datamodule=datamodule)
    module.use_datamodule_categories()
    module.cfg.prompt_words = "object_word"
    module.use_datamodule_categories()
    assert calls == [["metal_nut", "pipe_fryum"], ["metal nut", "pipe fryum"]]
    normal, abnormal = module.model.prompt_ensemble.sentences("metal_nut")
    assert "a bad photo of a damaged metal_nut." in abnormal and len(normal) == 7 * 35


def _write(path, array) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_authors_mosaic_pastes_full_size_originals_then_preprocesses(tmp_path):
    """Reference: the authors' combine_img written with PIL (RGB canvas of twice the first image's size, each
    image pasted at its quarter's corner, masks as L images with 255), then the dataset's transform."""
    rng = np.random.default_rng(0)
    shapes = [(10, 12), (10, 12), (14, 8), (6, 12)]  # (H, W): the third is cut at the bottom edge
    records, pil_images, pil_masks = [], [], []
    for i, (h, w) in enumerate(shapes):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        if i % 2:
            mask[1:4, 2:5] = 255
        records.append(
            SimpleNamespace(
                category="nut",
                defect_type="crack" if i % 2 else "good",
                image_path=_write(tmp_path / f"{i}.png", image),
                mask_path=_write(tmp_path / f"{i}_mask.png", mask) if i % 2 else None,
                label=i % 2,
            )
        )
        pil_images.append(Image.fromarray(image))
        pil_masks.append(Image.fromarray(mask, mode="L"))
    seen = []

    def transform(image: Image.Image, mask: Image.Image):
        seen.append((np.asarray(image), np.asarray(mask)))
        return torch.from_numpy(seen[-1][0]).permute(2, 0, 1).float(), torch.from_numpy(seen[-1][1]).float()

    dataset = SimpleNamespace(records=records, categories=["nut"], transform=transform)
    image, mask, label = SameCategoryMosaic(dataset, rate=1.0).compose([0, 1, 2, 3])

    width, height = pil_images[0].size
    canvas, canvas_mask = Image.new("RGB", (2 * width, 2 * height)), Image.new("L", (2 * width, 2 * height))
    for i, (tile, tile_mask) in enumerate(zip(pil_images, pil_masks, strict=True)):
        corner = ((i % 2) * width, (i // 2) * height)
        canvas.paste(tile, corner)
        if i % 2 == 0:  # the authors' normal mask: Image.fromarray(np.zeros((W, H)), mode="L")
            tile_mask = Image.fromarray(np.zeros((tile.size[0], tile.size[1]), dtype=np.uint8))
        canvas_mask.paste(tile_mask, corner)
    assert np.array_equal(seen[0][0], np.asarray(canvas))
    np.testing.assert_array_equal(seen[0][1], np.asarray(canvas_mask))
    assert image.shape == (3, 20, 24) and label == 1


def test_authors_mosaic_draws_a_folder_then_a_file():
    """8 good images and 2 cracks: a tile is a crack with probability 1/2 (folder first), not 1/5."""
    records = [SimpleNamespace(category="nut", defect_type="good") for _ in range(8)]
    records += [SimpleNamespace(category="nut", defect_type="crack") for _ in range(2)]
    dataset = SimpleNamespace(records=records, categories=["nut"])
    shares = {}
    for style in ("authors", "resized_tiles"):
        torch.manual_seed(0)
        mosaic = SameCategoryMosaic(dataset, rate=1.0, style=style)
        tiles = [t for _ in range(300) for t in mosaic.draw_tiles(0)]
        shares[style] = sum(t >= 8 for t in tiles) / len(tiles)
        assert set(tiles) == set(range(10))
    assert shares["authors"] == pytest.approx(0.5, abs=0.05)
    assert shares["resized_tiles"] == pytest.approx(0.2, abs=0.05)


def test_folder_prompts_name_a_loco_rows_object_not_the_row(tiny_clip):
    """MVTec LOCO's rows "breakfast_box_logical"/"_structural" are one folder, "breakfast_box": the row id in
    the prompt would name the anomaly type (datamodule.category_folders)."""
    calls = []
    module = VANDModule(VANDConfig(backbone=tiny_backbone(), feature_layers=[3]), model=_vand(tiny_clip, 32))
    module.model.set_classes = calls.append
    datamodule = SimpleNamespace(
        categories=["breakfast_box_logical", "breakfast_box_structural"],
        category_folders=["breakfast_box", "breakfast_box"],
        full_index=SimpleNamespace(
            prompt_names=lambda: dict.fromkeys(
                ["breakfast_box_logical", "breakfast_box_structural"], "breakfast box"
            )
        ),
    )
    module.__dict__["_trainer"] = SimpleNamespace(datamodule=datamodule)
    module.use_datamodule_categories()
    assert calls == [["breakfast_box", "breakfast_box"]]


def test_folder_prompts_of_two_sources_sharing_a_category_name_the_folder(
    tiny_clip, synthetic_pair, shared_category_source
):
    """Training on two sources that share a category id ("disc"): the combined ids are qualified
    ("synthetic@industrial:disc") to keep them apart, but the prompts name the folder, "disc"."""
    from datamodules.config import DataConfig
    from datamodules.datamodule import AnomalyDataModule
    from datamodules.multi_source import MultiSourceDataModule

    parts = [
        AnomalyDataModule(DataConfig(name="synthetic", root=str(root), num_workers=0), image_size=32)
        for root in (synthetic_pair[0], shared_category_source)
    ]
    combined = MultiSourceDataModule(parts)
    assert "synthetic@industrial:disc" in combined.categories
    calls = []
    module = VANDModule(VANDConfig(backbone=tiny_backbone(), feature_layers=[3]), model=_vand(tiny_clip, 32))
    module.model.set_classes = calls.append
    module.__dict__["_trainer"] = SimpleNamespace(datamodule=combined)
    module.use_datamodule_categories()
    assert calls == [["disc", "weave", "disc", "grain"]]
