"""AnoVL's text branch: prompts, views, image score and map against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dual_image_support import single_thread, tiny_method_config  # noqa: F401 - a fixture

from datamodules.errors import ConfigError
from lightning_modules.anovl import AnoVL, AnoVLConfig, BatchText
from lightning_modules.anovl.model import anovl_views, pool_replicate
from lightning_modules.anovl.prompts import ABNORMAL_STATES, MEDIA, NORMAL_STATES, anovl_ensemble, prompt_kind
from lightning_modules.ops import l2_normalize

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_anovl_config(**overrides) -> AnoVLConfig:
    return tiny_method_config("anovl_tiny", **overrides)


def test_prompts_are_seven_state_pairs_times_66_domain_templates():
    normal, abnormal = anovl_ensemble("object").sentences("metal nut")
    assert len(NORMAL_STATES) == len(ABNORMAL_STATES) == 7
    assert len(normal) == len(abnormal) == 7 * 66 and len(set(normal)) == 7 * 66
    assert "an industrial photo of a flawless metal nut for visual inspection" in normal
    assert "a manufacturing image of the metal nut with defect" in abnormal
    # template-major as the authors' prompt_ensemble.py (the row order of the TTA adapter's prompt span)
    assert normal[:2] == [
        "a cropped industrial photo of the normal metal nut",
        "a cropped industrial photo of the flawless metal nut",
    ]
    assert abnormal[7] == "a cropped industrial photo of a damaged metal nut"
    texture, _ = anovl_ensemble("texture").sentences("carpet")
    assert any("surface picture" in s for s in texture) and not any("manufacturing" in s for s in texture)
    assert prompt_kind("carpet", "carpet", "industrial", ["carpet"]) == "texture"
    assert prompt_kind("screw", "screw", "industrial", ["carpet"]) == "object"
    assert prompt_kind("brain", "brain", "medical", ["carpet"]) == "medical" and "medical" in MEDIA
    assert len(anovl_ensemble("object", templates_per_domain=2).sentences("x")[0]) == 7 * 3 * 2


def test_category_text_averages_raw_sentence_features(tiny_clip):
    model = AnoVL(tiny_anovl_config(), *tiny_clip)
    text = model.category_text("ring", "object")
    normal, abnormal = anovl_ensemble("object", 2).sentences("ring")
    ids = tiny_clip[1](normal + abnormal)
    with torch.no_grad():
        raw = model.text.encode(ids).float()  # full 77-token padding: cutting it must not change anything
    n = len(normal)
    torch.testing.assert_close(text.classes[0], l2_normalize(raw[:n].mean(0)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text.classes[1], l2_normalize(raw[n:].mean(0)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text.prompts, l2_normalize(raw), atol=1e-5, rtol=1e-5)


def test_views_are_the_authors_22():
    images = torch.randn(2, 3, 16, 16)
    views = anovl_views(images).view(22, 2, 3, 16, 16)
    torch.testing.assert_close(views[0], images)
    torch.testing.assert_close(views[17], images.flip(-1))
    torch.testing.assert_close(views[19], torch.rot90(images, 1, (-2, -1)))
    grey = views[18]
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])


def test_image_score_and_map_equal_direct_computation(tiny_clip):
    model = AnoVL(tiny_anovl_config(), *tiny_clip)
    text = model.category_text("ring", "object")
    images = torch.randn(3, 3, 32, 32)
    scores, maps = model.predict(images, BatchText.stack([text] * 3), size=(20, 20))

    views = anovl_views(images)
    embedding = l2_normalize(model.clip.encode_image(views)).view(22, 3, -1)
    expected_scores = (embedding @ text.classes.t()).softmax(-1)[..., 1].mean(0)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-4)

    tokens = model.vision(images, layers=[6]).tokens[6][:, 1:]
    patches = l2_normalize(model.vision.visual.ln_post(tokens) @ model.vision.visual.proj)
    prob = (patches @ text.classes.t()).softmax(-1)[..., 1].view(3, 4, 4)
    padded = F.pad(prob[:, None], (1, 1, 1, 1), mode="replicate")
    pooled = torch.zeros(3, 4, 4)
    for i in range(4):
        for j in range(4):
            pooled[:, i, j] = padded[:, 0, i : i + 3, j : j + 3].mean(dim=(-1, -2))
    torch.testing.assert_close(pool_replicate(prob, 3), pooled, atol=1e-6, rtol=1e-5)
    expected_maps = F.interpolate(pooled[:, None], size=(20, 20), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(maps, expected_maps, atol=1e-5, rtol=1e-4)


def test_map_layer_must_exist(tiny_clip):
    with pytest.raises(ConfigError, match="map_layer"):
        AnoVL(tiny_anovl_config(map_layer=7), *tiny_clip)
