"""VAND: the loss on a hand-computed example, the maps, the mosaic, and training end to end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from baselines_support import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_backbone,
)

from lightning_modules.mosaic import SameCategoryMosaic, mosaic_2x2
from lightning_modules.vand import VAND, VANDConfig, VANDOutput


def _tiny_vand(tiny_clip, **overrides) -> VAND:
    model, tokenizer = tiny_clip
    return VAND(VANDConfig(backbone=tiny_backbone(), feature_layers=[3, 6], **overrides), model, tokenizer)


def test_loss_equals_a_hand_computed_example(tiny_clip):
    vand = _tiny_vand(tiny_clip)
    anomalous = torch.tensor([[0.9, 0.2], [0.4, 0.7]])
    probs = torch.stack([1 - anomalous, anomalous])[None]  # [1, 2, 2, 2]
    gt = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    output = VANDOutput(image_scores=torch.zeros(1), pixel_probs=[probs, probs])  # two layers

    # focal (gamma 2, smoothing 1e-5 as the authors' FocalLoss): p_t = sum(clamp(onehot) * p) + 1e-5
    eps = 1e-5
    focal = 0.0
    for p_anomalous, label in ((0.9, 1), (0.2, 0), (0.4, 0), (0.7, 1)):
        p = (1 - p_anomalous, p_anomalous)
        p_t = sum((1 - eps if c == label else eps) * p[c] for c in range(2)) + eps
        focal += -((1 - p_t) ** 2) * math.log(p_t) / 4
    dice = 1 - (2 * (0.9 + 0.7) + 1) / ((0.9 + 0.2 + 0.4 + 0.7) + 2 + 1)
    assert vand.loss(output, gt).item() == pytest.approx(2 * (focal + dice), rel=1e-6)


def test_maps_upsample_logits_then_softmax(tiny_clip):
    model, _ = tiny_clip
    vand = _tiny_vand(tiny_clip)
    torch.manual_seed(2)
    vand.class_text = F.normalize(torch.randn(1, 2, model.visual.proj.shape[1]), dim=-1)
    images = torch.randn(2, 3, 32, 32)
    output = vand(images, torch.zeros(2, dtype=torch.long), (16, 16))
    with torch.no_grad():
        features = vand.vision(images, layers=[3, 6])
        for i, layer in enumerate((3, 6)):
            patches = F.normalize(
                vand.heads[i](features.tokens[layer][:, 1:]), dim=-1
            )  # raw tokens: no ln_post/proj
            logits = 100.0 * patches @ vand.class_text[0].t()
            logits = F.interpolate(
                logits.transpose(1, 2).reshape(2, 2, 4, 4), size=(16, 16), mode="bilinear", align_corners=True
            )
            torch.testing.assert_close(output.pixel_probs[i], logits.softmax(dim=1), atol=1e-5, rtol=1e-5)
        image = F.normalize(model.encode_image(images), dim=-1)
        expected = (100.0 * image @ vand.class_text[0].t()).softmax(-1)[:, 1]
    torch.testing.assert_close(output.image_scores, expected, atol=1e-5, rtol=1e-5)
    scores, maps = vand.predict(images, torch.zeros(2, dtype=torch.long), (16, 16))
    torch.testing.assert_close(maps, output.pixel_probs[0][:, 1] + output.pixel_probs[1][:, 1])
    assert {n.split(".")[0] for n, p in vand.named_parameters() if p.requires_grad} == {"heads"}


def test_resized_tiles_mosaic_takes_tiles_of_the_same_category():
    tiles = [torch.full((3, 4, 4), float(v)) for v in range(4)]
    mosaic = mosaic_2x2(tiles)
    assert mosaic.shape == (3, 4, 4)
    assert (
        mosaic[0, :2, :2].eq(0).all()
        and mosaic[0, :2, 2:].eq(1).all()
        and mosaic[0, 2:, :2].eq(2).all()
        and mosaic[0, 2:, 2:].eq(3).all()
    )

    records = [SimpleNamespace(category=c) for c in ("a", "b", "a", "b", "a")]
    items = [
        {
            "image": torch.full((3, 4, 4), float(i)),
            "mask": torch.full((4, 4), float(i == 4)),
            "label": torch.tensor(int(i == 4)),
        }
        for i in range(5)
    ]
    dataset = type(
        "D", (), {"records": records, "categories": ["a", "b"], "__getitem__": lambda self, i: items[i]}
    )()
    batch = {
        "image": torch.zeros(3, 3, 4, 4),
        "mask": torch.zeros(3, 4, 4),
        "label": torch.zeros(3, dtype=torch.long),
        "category_id": torch.tensor([0, 1, 0]),
        "has_mask": torch.ones(3, dtype=torch.bool),
    }
    torch.manual_seed(0)
    out = SameCategoryMosaic(dataset, rate=1.0, style="resized_tiles")(batch)
    for i, category in enumerate((0, 1, 0)):
        quadrant_values = {out["image"][i, 0, r, c].item() for r in (0, 2) for c in (0, 2)}
        allowed = {0.0, 2.0, 4.0} if category == 0 else {1.0, 3.0}
        assert quadrant_values <= allowed
        quadrant_masks = {out["mask"][i, r, c].item() for r in (0, 2) for c in (0, 2)}
        assert out["label"][i].item() == int(1.0 in quadrant_masks)
    assert SameCategoryMosaic(dataset, rate=0.0, style="resized_tiles")(batch) is batch
