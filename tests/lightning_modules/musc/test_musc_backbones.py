"""MuSc's backbone switch: CLIP (default), DINOv2 and DINO through timm's ViT (lightning_modules/dino/)."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError, WeightsNotFoundError
from lightning_modules.dino.config import DinoBackboneConfig
from lightning_modules.dino.encoder import TINY_DINO, TINY_DINO_V1
from lightning_modules.musc.config import MuScConfig
from lightning_modules.musc.features import dino_blocks
from lightning_modules.musc.model import MuSc
from lightning_modules.musc.spec import MUSC, preprocessing


def dino_config(family: str = "dinov2", layers=(0, 1), size: int = 112, **dino) -> MuScConfig:
    name = TINY_DINO if family == "dinov2" else TINY_DINO_V1
    return MuScConfig(
        backbone_family=family,
        dino=DinoBackboneConfig(
            **{"name": name, "pretrained": None, "image_size": size, "interpolate_offset": 0.1, **dino}
        ),
        feature_layers=list(layers),
    )


def test_the_default_is_the_papers_clip_and_the_dino_default_their_dinov2_vitl14_at_518():
    cfg = MuScConfig()
    assert cfg.backbone_family == "clip" and cfg.active_backbone() is cfg.backbone
    assert (cfg.backbone.name, cfg.backbone.image_size, MUSC.image_size(cfg)) == (
        "ViT-L-14-336-quickgelu",
        518,
        518,
    )
    assert (cfg.dino.name, cfg.dino.pretrained, cfg.dino.image_size) == (
        "vit_large_patch14_dinov2",
        "lvd142m",
        518,
    )
    assert cfg.dino.interpolate_offset == 0.1
    assert MUSC.image_size(dino_config(size=336)) == 336


def test_the_dino_families_read_their_authors_blocks():
    assert dino_blocks("dinov2", [2, 5, 8, 11], 12) == [2, 5, 8, 11]
    assert dino_blocks("dino", [2, 5, 8, 11], 12) == [2, 5, 8, 11]
    # their get_intermediate_layers(n=max + 1) returns the last max + 1 blocks, indexed by layer
    assert dino_blocks("dino", [1, 3, 5], 12) == [7, 9, 11]
    assert dino_blocks("dinov2", [1, 3, 5], 12) == [1, 3, 5]
    with pytest.raises(ConfigError, match="feature_layers"):
        MuSc(dino_config("dino", layers=(0, 2)))  # block 2 of 2 does not exist, there or here


def test_preprocessing_follows_the_family():
    clip = preprocessing(MuScConfig(), "mvtec")
    dino = preprocessing(dino_config(), "mvtec")
    assert (clip.interpolation, clip.normalization) == ("bicubic", "clip")
    assert (dino.interpolation, dino.normalization, dino.rgb_before_resize) == ("bilinear", "imagenet", True)
    assert dino.mask_threshold == clip.mask_threshold


@pytest.mark.parametrize("family", ["dinov2", "dino"])
def test_extract_gives_normalised_tokens_and_the_unnormalised_class_token(family):
    torch.manual_seed(0)
    size = 112 if family == "dinov2" else 128
    model = MuSc(dino_config(family, size=size))
    tokens, embeddings = model.extract(torch.randn(5, 3, size, size))
    assert model.grid == (8, 8) and (model.width, model.embedding_dim, model.image_size) == (32, 32, size)
    assert [t.shape for t in tokens] == [(5, 65, 32)] * 2
    # after the final LayerNorm (affine part at its init: weight 1, bias 0): zero mean per token
    assert tokens[1].mean(dim=-1).abs().max() < 1e-5
    assert not torch.allclose(embeddings.norm(dim=-1), torch.ones(5))  # their RsCIN takes it unnormalised
    torch.testing.assert_close(embeddings, tokens[1][:, 0])  # the last block's (layer 1 of 2 blocks)
    scores, maps = model.score_category(tokens, embeddings, [list(range(5))], (size, size), [1, 2])
    assert maps.shape == (5, size, size) and scores.shape == (5,) and torch.isfinite(scores).all()


def test_missing_dino_weights_are_one_clear_error(tmp_path):
    cfg = MuScConfig(backbone_family="dinov2")
    cfg.dino.cache_dir = str(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="not available offline.*pretrained=/path/to/file"):
        MuSc(cfg)
    cfg.dino.pretrained = str(tmp_path / "dinov2_vitl14_pretrain.pth")
    with pytest.raises(WeightsNotFoundError, match="file not found"):
        MuSc(cfg)


def test_an_unknown_family_is_refused():
    with pytest.raises(ConfigError, match="backbone_family"):
        MuSc(MuScConfig(backbone_family="resnet"))


def test_the_checkpoint_identity_names_the_chosen_backbone():
    from lightning_modules.musc.module import MuScModule

    torch.manual_seed(0)
    cfg = dino_config()
    identity = MuScModule(cfg).checkpoint_identity()
    assert identity["backbone_family"] == "dinov2" and identity["backbone"]["name"] == TINY_DINO


def test_every_backbone_sweep_run_gets_its_readme_row_as_published_numbers():
    """Each variant of musc_backbones is one row of their README's backbone study (their backbone names,
    sizes and their scripts' layers), and ``published_for`` of its resolved settings returns that row: the
    numbers `zsad report --reference` puts beside it."""
    import dataclasses

    from lightning_modules.method_spec import flatten
    from lightning_modules.musc.spec import (
        AUTHORS_CLIP_BACKBONES,
        AUTHORS_DINO_BACKBONES,
        BACKBONE_STUDY,
        PUBLISHED,
        backbone_study,
        published_for,
    )
    from pipelines import sweep
    from pipelines.config import compose, to_object

    cfg, _ = sweep.load_sweep("musc_backbones")
    runs = sweep.expand(cfg)
    assert sweep.invalid_runs(cfg, runs) == []
    clip_names = {v: k for k, v in AUTHORS_CLIP_BACKBONES.items()}
    dino_names = {(v[1], v[0]): k for k, v in AUTHORS_DINO_BACKBONES.items()}
    studied = set()
    for run in runs:
        method = to_object(compose(run.experiment, list(run.overrides))).method
        if method.backbone_family == "clip":
            row = (clip_names[(method.backbone.name, method.backbone.pretrained)], method.backbone.image_size)
        else:
            row = (dino_names[(method.dino.name, method.backbone_family)], method.dino.image_size)
            assert method.dino.interpolate_offset == 0.1
        studied.add(row)
        twelve_blocks = "-B-" in row[0] or "vitb" in row[0]
        assert method.feature_layers == ([2, 5, 8, 11] if twelve_blocks else [5, 11, 17, 23])
        expected = PUBLISHED if row == ("ViT-L-14-336", 518) else backbone_study(*row)
        assert published_for(flatten(dataclasses.asdict(method))) == expected, row
    assert studied == set(BACKBONE_STUDY)
    numbers = backbone_study("dinov2_vitl14", 518).results
    assert numbers["mvtec"]["image_auroc"] == pytest.approx(0.9708) and numbers["btad"][
        "aupro"
    ] == pytest.approx(0.8247)
    # the README's default row is the paper's default numbers (PUBLISHED), metric for metric
    default = backbone_study("ViT-L-14-336", 518).results
    for dataset, metrics in PUBLISHED.results.items():
        assert {m: default[dataset][m] for m in metrics} == pytest.approx(metrics)
    # settings no source measured: none
    assert published_for({"feature_layers": [2, 5, 8, 11]}) is None  # their ViT-L runs used 5 11 17 23
    assert published_for({"activation": "gelu"}) is None
    assert published_for({"backbone.image_size": 448}) is None
    assert published_for({}) == PUBLISHED


def test_no_published_numbers_beside_a_backbone_switched_away_from_the_authors():
    """The position-embedding switches (named deviations, docs/methods.md#musc) change the features: a run
    with one of them off the authors' value is no setting their paper or README measured. The other family's
    switches are not read (that backbone is not built)."""
    from lightning_modules.musc.spec import PUBLISHED, published_for

    assert published_for({"backbone.pos_embed_interpolation": "bilinear"}) is None
    dinov2 = {"backbone_family": "dinov2"}
    assert published_for(dinov2) is not None
    assert published_for({**dinov2, "dino.interpolate_offset": None}) is None
    assert published_for({**dinov2, "dino.pos_embed_antialias": True}) is None
    assert published_for({**dinov2, "backbone.pos_embed_interpolation": "bilinear"}) == published_for(dinov2)
    assert published_for({"dino.interpolate_offset": None}) == PUBLISHED
    # CLIP's activation switch does not touch a DINO backbone; CLIP's does
    assert published_for({**dinov2, "activation": "gelu"}) == published_for(dinov2)
    # the released weight files, given by path, are the tags' weights; a file of another name is unknown
    assert published_for({"backbone.pretrained": "/weights/ViT-L-14-336px.pt"}) == PUBLISHED
    assert published_for({"backbone.pretrained": "/weights/my_finetuned.pt"}) is None
    assert published_for({**dinov2, "dino.pretrained": "/w/dinov2_vitl14_pretrain.pth"}) == published_for(
        dinov2
    )
    assert (
        published_for({**dinov2, "dino.pretrained": "/w/dinov2_vitb14_pretrain.pth"}) is None
    )  # not ViT-L's


def test_zsad_run_with_the_tiny_dinov2_config(tmp_path, synthetic_pair):
    """End to end (`zsad run`): the DINOv2 family's input size and preprocessing reach the datamodule and
    results.json, and every category gets its metrics."""
    import json

    from baselines_support import write_method_experiment

    from pipelines.cli import main

    _, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "musc_dinov2_tiny", None, target)
    run_dir = tmp_path / "run"
    args = ["run", str(experiment), "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false"]
    assert main([*args, "eval.visualize=false", f"run_dir={run_dir}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())["targets"]["synthetic"]
    assert results["image_size"] == 112
    assert (results["preprocessing"]["interpolation"], results["preprocessing"]["normalization"]) == (
        "bilinear",
        "imagenet",
    )
    assert set(results["categories"]) == {"ring", "cells"}
    for metrics in results["categories"].values():
        assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["pixel_auroc"] <= 1.0
