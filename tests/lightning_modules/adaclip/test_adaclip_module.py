"""AdaCLIP's pieces around the parity-checked path: the authors' checkpoint format, every prompting variant
of their code (DDP needs a gradient for every trainable parameter), the losses' switches, their object
words and the mosaic of their MVTec AD dataset class."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from datamodules.errors import ConfigError, ZsadError
from lightning_modules.adaclip import AdaCLIP, AdaCLIPConfig, AdaCLIPModule
from lightning_modules.adaclip.model import default_feature_layers, hybrid_semantic_fusion
from lightning_modules.adaclip.module import authors_class_names
from lightning_modules.adaclip.spec import ADACLIP
from lightning_modules.clip.config import BackboneConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import parity_adaclip as pa  # noqa: E402
import parity_support as ps  # noqa: E402


def _tiny(tiny_clip, **overrides) -> AdaCLIP:
    model, tokenizer = tiny_clip
    backbone = BackboneConfig(name="zsad-tiny-vit", pretrained=None, image_size=64)
    cfg = AdaCLIPConfig(backbone=backbone, k_clusters=4, **overrides)
    adaclip = AdaCLIP(cfg, model, tokenizer)
    adaclip.set_classes(["metal-nut", "disc"])
    return adaclip


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory) -> Path:
    """The initial state their AdaCLIP_Trainer.save wrote in the parity run (the fixture keeps its
    entries), saved again as their file: a flat dict of ``clip_model.*`` tensors."""
    path = tmp_path_factory.mktemp("authors") / "pretrained_mvtec_colondb.pth"
    torch.save(pa.initial_state(ps.load_fixture(pa.FIXTURE)), path)
    return path


def _parity_module(**overrides) -> AdaCLIPModule:
    """zsad's AdaCLIP on the parity CLIP's architecture (random weights: only the prompts' shapes matter)."""
    import open_clip

    pa.register_model()
    cfg = pa.zsad_config(**overrides)
    model = AdaCLIP(cfg, open_clip.create_model(pa.MODEL), open_clip.get_tokenizer(pa.MODEL))
    return AdaCLIPModule(cfg, model=model)


def test_the_authors_checkpoint_loads_by_name_and_shape(authors_file):
    state = torch.load(authors_file, weights_only=True)
    module = _parity_module()
    module.load_trained_weights(str(authors_file), ADACLIP.official_checkpoint)
    params = dict(module.model.prompts.named_parameters())
    assert torch.equal(params["patch_heads.2.weight"], state["clip_model.patch_token_layer.head.2.weight"])
    assert torch.equal(params["text_static.0"], state["clip_model.text_prompter.static_prompts.1"])
    assert torch.equal(params["visual_static.0"], state["clip_model.visual_prompter.static_prompts.0"])
    assert torch.equal(params["cls_head.bias"], state["clip_model.cls_token_layer.head.0.bias"])
    assert torch.equal(
        params["dynamic_text.4.weight"], state["clip_model.dynamic_text_prompt_generator.head.4.weight"]
    )


@pytest.mark.parametrize(
    ("overrides", "edit", "message"),
    [
        ({"prompting_depth": 3}, None, "4 text static prompts, but method.prompting_depth is 3"),
        ({"prompting_length": 4}, None, "5 dynamic prompt tokens, but method.prompting_length is 4"),
        ({}, "narrow", "static_prompts.1 has shape|text_static.0 has shape .* but this model needs"),
        ({}, "extra", "unexpected entry 'clip_model.extra.weight'"),
        ({}, "foreign", "neither a zsad checkpoint .* nor the AdaCLIP authors' checkpoint"),
        ({"prompting_type": "S"}, None, "has dynamic prompt generators .*prompting_type='S'"),
        ({"prompting_branch": "V"}, None, "has text static prompts .*prompting_branch='V'"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_with_one_line(
    authors_file, tmp_path, overrides, edit, message
):
    state = torch.load(authors_file, weights_only=True)
    if edit == "extra":
        state["clip_model.extra.weight"] = torch.zeros(1)
    elif edit == "foreign":
        state = {"prompt_learner": {}}
    elif edit == "narrow":
        state["clip_model.text_prompter.static_prompts.1"] = torch.zeros(5, 16)
    torch.save(state, tmp_path / "file.pth")
    with pytest.raises(ZsadError, match=message):
        _parity_module(**overrides).load_trained_weights(
            str(tmp_path / "file.pth"), ADACLIP.official_checkpoint
        )


VARIANTS = [(t, b) for t in ("SD", "S", "D") for b in ("VL", "V", "L")] + [("SD", "")]


@pytest.mark.parametrize(("prompting_type", "prompting_branch"), VARIANTS)
def test_every_variant_of_their_code_trains_every_parameter(tiny_clip, prompting_type, prompting_branch):
    """Their --prompting_type / --prompting_branch; nothing trainable is left without a gradient (what
    their forward never uses is not created: it would stall DDP)."""
    model = _tiny(tiny_clip, prompting_type=prompting_type, prompting_branch=prompting_branch)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    output = model(images, torch.tensor([0, 1]), [1, 2])
    masks = torch.zeros(2, 64, 64)
    masks[1, 10:30, 20:40] = 1
    model.loss(output, torch.tensor([0, 1]), masks)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert (model.prompts.visual_static is not None) == ("V" in prompting_branch and "S" in prompting_type)
    assert (model.prompts.dynamic_text is not None) == ("L" in prompting_branch and "D" in prompting_type)


def test_settings_their_code_cannot_run_are_config_errors(tiny_clip):
    with pytest.raises(ConfigError, match="prompting_branch='VL' needs a prompting_type"):
        _tiny(tiny_clip, prompting_type="")
    with pytest.raises(ConfigError, match="method.dice_unit must be one of"):
        _tiny(tiny_clip, dice_unit="pixel")
    assert default_feature_layers(24) == [6, 12, 18, 24] and default_feature_layers(12) == [3, 6, 9, 12]


def test_dice_per_row_and_the_images_without_masks(tiny_clip):
    """dice_unit=row is Dice over every image row (their [H, W] ground truth at batch 1), image over each
    image; maskless_pixel_loss=skip leaves images without ground truth out of the pixel losses."""
    model = _tiny(tiny_clip)
    output = model(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), [1, 2])
    masks = torch.zeros(2, 64, 64)
    masks[1, 8:40, 8:20] = 1
    labels, has_mask = torch.tensor([1, 1]), torch.tensor([False, True])
    rows = model.loss(output, labels, masks)["pixel_loss"]
    per_image = dataclasses.replace(model.cfg, dice_unit="image")
    model.cfg = per_image
    assert not torch.isclose(model.loss(output, labels, masks)["pixel_loss"], rows)
    model.cfg = dataclasses.replace(per_image, dice_unit="row", maskless_pixel_loss="skip")
    skipped = model.loss(output, labels, masks, has_mask)
    model.cfg = dataclasses.replace(model.cfg, maskless_pixel_loss="zeros")
    kept_one = model.loss(
        dataclasses.replace(
            output,
            image_probs=output.image_probs[1:],
            patch_logits=[x[1:] for x in output.patch_logits],
        ),
        labels[1:],
        masks[1:],
    )
    assert torch.allclose(skipped["pixel_loss"], kept_one["pixel_loss"])


def test_hsf_with_one_cluster_is_the_mean_of_the_most_anomalous_patches():
    generator = torch.Generator().manual_seed(0)
    patches = [
        torch.nn.functional.normalize(torch.randn(1, 30, 8, generator=generator), dim=-1) for _ in range(2)
    ]
    logits = [torch.randn(1, 30, 2, generator=generator) for _ in range(2)]
    fused = hybrid_semantic_fusion(patches, logits, k_clusters=1, tokens_per_cluster=5, random_states=[0])
    top = torch.stack(logits, 1).mean(1).softmax(2)[0, :, 1].topk(5).indices
    expected = torch.cat([p[0, top] for p in patches]).mean(0)
    assert torch.allclose(fused[0], torch.nn.functional.normalize(expected, dim=0), atol=1e-6)


def test_their_object_words():
    categories = ["bottle", "brainmri", "colondb", "Class1"]
    datasets = ["mvtec", "brainmri", "colondb", "dagm"]
    assert authors_class_names(categories, datasets) == ["bottle", "brain_mri", "colondb", "Class1"]


def test_hsf_seeds_follow_the_image_not_the_folder_it_is_stored_in(tiny_clip):
    module = AdaCLIPModule(_tiny(tiny_clip).cfg, model=_tiny(tiny_clip))
    here = module.hsf_seeds({"image_path": ["/data/mvtec/bottle/test/broken_large/000.png"]})
    there = module.hsf_seeds({"image_path": ["/scratch/copy/mvtec/bottle/test/broken_large/000.png"]})
    other = module.hsf_seeds({"image_path": ["/data/mvtec/bottle/test/broken_large/001.png"]})
    assert here == there != other
    assert module.hsf_seeds({"image_path": ["/d/x/a/b/c.png"]}, step=1) != module.hsf_seeds(
        {"image_path": ["/d/x/a/b/c.png"]}, step=2
    )


def test_per_image_test_scores_do_not_depend_on_the_batch_and_ddp_is_refused_otherwise(tiny_clip):
    """HSF's k-means is discontinuous in its input, so batched scores may depend on the batch's other
    images; one image at a time (the default, as the authors' loop) they cannot, and a DDP evaluation (other
    batches) is then exact. Batched, the spec refuses DDP with one line."""
    model = _tiny(tiny_clip)
    module = AdaCLIPModule(model.cfg, model=model)
    generator = torch.Generator().manual_seed(3)
    batch = {
        "image": torch.randn(3, 3, 64, 64, generator=generator),
        "category_id": torch.tensor([0, 1, 0]),
        "mask": torch.zeros(3, 64, 64),
        "image_path": ["/d/a/t/b/0.png", "/d/a/t/b/1.png", "/d/a/t/b/2.png"],
    }
    scores, maps = module.predict_batch(batch)
    alone = module.predict_batch({k: v[1:2] for k, v in batch.items()})
    assert torch.equal(scores[1:2], alone[0]) and torch.equal(maps[1:2], alone[1])
    assert ADACLIP.ddp_refusal_reason(model.cfg) is None
    batched = dataclasses.replace(model.cfg, per_image_test=False)
    assert "method.per_image_test=true" in ADACLIP.ddp_refusal_reason(batched)
