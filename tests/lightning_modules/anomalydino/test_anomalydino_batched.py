"""AnomalyDINO's batched zero-shot scoring (lightning_modules/anomalydino/batched.py): the authors'
calculate_cosine_distances / dists_to_score rules (run_anomalydino_batched.py) written out here per image as
they are, their edge cases (k = 0, nothing strictly below the k-th, < 100 patches) and zsad's guards, the
memory-bounded chunks, the configs and the spec's protocols."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from baselines_support import one_torch_thread, tiny_dino_run  # noqa: F401 (autouse: one torch thread)

from datamodules.errors import ZsadError
from lightning_modules.anomalydino.batched import (
    batched_patch_distances,
    category_scores,
    quantile_k,
    top_mean,
)
from lightning_modules.method_spec import FEW_SHOT, TRANSDUCTIVE
from lightning_modules.registry import get_method
from pipelines.config import compose, to_object


def their_distances(blocks: list[torch.Tensor], i: int, quantile: float) -> torch.Tensor:
    """Their calculate_cosine_distances, line by line (float32, torch.kthvalue, strict <, sum / count)."""
    others = torch.cat([b for j, b in enumerate(blocks) if j != i])
    distance = 1 - F.normalize(blocks[i], dim=1) @ F.normalize(others, dim=1).T
    kth = torch.kthvalue(distance, int(quantile * distance.shape[1]), dim=1).values[:, None]
    below = distance < kth
    return (distance * below).sum(dim=1) / below.sum(dim=1)


def blocks_of(counts: list[int], seed: int = 0, dim: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=generator) for n in counts]


@pytest.mark.parametrize("quantile", [0.03, 0.05, 0.2])  # k >= 3: nothing NaN
def test_patch_distances_are_their_rule_on_images_of_several_sizes(quantile):
    counts = [30, 45, 60, 25]  # any grid: the images need not share a size
    blocks = blocks_of(counts)
    theirs = torch.cat([their_distances(blocks, i, quantile) for i in range(len(blocks))])
    ours = batched_patch_distances(torch.cat(blocks), counts, quantile)
    assert (ours - theirs).abs().max() <= 1e-6


def test_memory_bounded_chunks_give_the_same_distances():
    counts = [40, 50, 35]
    features = torch.cat(blocks_of(counts, seed=1))
    whole = batched_patch_distances(features, counts, 0.05)
    for chunk in (1, 125, 1000):  # one row at a time, a few rows, partial blocks
        assert (
            batched_patch_distances(features, counts, 0.05, chunk_elements=chunk) - whole
        ).abs().max() <= 1e-6


def test_a_patch_is_never_compared_with_its_own_image():
    """Each image duplicated: with its own patches among the others every distance would have 0s below."""
    block = blocks_of([20], seed=2)[0]
    counts = [20, 20, 20]
    features = torch.cat([block, block + 0.3 * torch.randn_like(block), torch.randn_like(block)])
    ours = batched_patch_distances(features, counts, 0.1)
    theirs = torch.cat([their_distances(list(features.split(counts)), i, 0.1) for i in range(3)])
    assert (ours - theirs).abs().max() <= 1e-6 and (ours > 1e-3).all()


def test_k_zero_is_refused_as_their_kthvalue_fails_or_guarded_to_one():
    assert quantile_k(0.001, 2000, False) == 2 and quantile_k(0.001, 1999, False) == 1
    with pytest.raises(RuntimeError):  # theirs: torch.kthvalue with k = 0
        torch.kthvalue(torch.rand(2, 999), 0, dim=1)
    with pytest.raises(ZsadError, match="batched_guards=true"):
        quantile_k(0.001, 999, False)
    assert quantile_k(0.001, 999, True) == 1
    with pytest.raises(ZsadError):  # a category of one image: nothing to compare with, guards or not
        quantile_k(0.001, 0, True)


def test_nothing_strictly_below_the_kth_is_their_nan_refused_or_guarded_to_the_kth_distance():
    """k = 1: nothing is strictly below the smallest distance (theirs 0 / 0 = NaN, which their
    roc_auc_score refuses); the guard scores such a patch by its k-th distance (here: the 1-NN distance)."""
    counts = [10, 10]
    features = torch.cat(blocks_of(counts, seed=3))
    theirs = their_distances(list(features.split(counts)), 0, 0.1)  # k = int(0.1 * 10) = 1
    assert theirs.isnan().all()
    assert batched_patch_distances(features, counts, 0.1).isnan().all()
    guarded = batched_patch_distances(features, counts, 0.1, guards=True)
    normed = F.normalize(features, dim=1)
    nearest = (1 - normed[:10] @ normed[10:].T).min(dim=1).values
    assert (guarded[:10] - nearest).abs().max() <= 1e-6
    with pytest.raises(ZsadError, match="no distance strictly below"):
        category_scores(features, counts, torch.ones(20, dtype=torch.bool), 0.1, 0.1)
    # a NaN on a background patch is zeroed as theirs (dists[~mask] = 0): defined there
    foreground = torch.zeros(20, dtype=torch.bool)
    distances, scores = category_scores(features, counts, foreground, 0.1, 0.1)
    assert all((d == 0).all() for d in distances) and (scores == 0).all()


def test_ties_through_the_kth_leave_nothing_below():
    """Identical patches: every distance ties at the k-th, nothing strictly below (theirs NaN)."""
    patch = torch.ones(1, 8)
    features = torch.cat([patch.repeat(10, 1), patch.repeat(10, 1)])
    assert batched_patch_distances(features, [10, 10], 0.2).isnan().all()
    guarded = batched_patch_distances(features, [10, 10], 0.2, guards=True)
    assert guarded.abs().max() <= 1e-6  # the k-th distance: 1 - cos = 0


def test_image_score_is_their_dists_to_score_without_a_max_one_guard():
    distances = torch.arange(250, dtype=torch.float32)
    assert top_mean(distances, 0.01, False) == pytest.approx((249 + 248) / 2)  # int(2.5) = 2
    with pytest.raises(ZsadError, match="mean of nothing"):
        top_mean(torch.rand(99), 0.01, False)  # theirs: np.mean([]) = NaN
    assert top_mean(torch.arange(99, dtype=torch.float32), 0.01, True) == 98


def test_the_spec_declares_few_shot_and_transductive():
    spec = get_method("anomalydino")
    assert spec.protocols == (FEW_SHOT, TRANSDUCTIVE) and spec.protocol_without_references == TRANSDUCTIVE


def test_the_batched_config_is_their_scripts_defaults():
    method = to_object(compose("anomalydino_batched_mvtec_visa")).method
    assert method.backbone.image_size == 672 and method.backbone.name == "vit_small_patch14_dinov2"
    assert (method.batched_quantile, method.top_fraction, method.batched_guards) == (0.001, 0.01, False)
    assert method.masking and method.mask_morphology == "raster" and not method.rotate_references
    assert set(method.masked_categories) == {
        *("capsule", "hazelnut", "pill", "screw", "toothbrush", "candle", "capsules", "cashew"),
        *("chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"),
    }  # their get_dataset_info(..., "masking_only")
    assert (method.map_resize, method.gaussian, method.preprocessing) == ("bilinear", "scipy", "authors")
    assert to_object(compose("anomalydino_batched_mvtec_visa")).protocol.shots == 0
    # no published numbers beside it (the paper's batched table is not read here)
    from dataclasses import asdict

    from lightning_modules.method_spec import flatten

    assert get_method("anomalydino").published_numbers(flatten(asdict(method))) is None


def test_a_bad_quantile_is_refused():
    from lightning_modules.anomalydino.config import AnomalyDINOConfig
    from lightning_modules.anomalydino.model import AnomalyDINO

    cfg = to_object(compose("demo", ["method=anomalydino_tiny"])).method
    assert isinstance(cfg, AnomalyDINOConfig) and cfg.batched_guards  # the tiny model's 9 patches
    cfg.batched_quantile = 0.0
    with pytest.raises(ZsadError, match="batched_quantile"):
        AnomalyDINO(cfg)


def batched_run(tmp_path, run_dir, *extra: str) -> dict:
    """``zsad run`` with configs/method/anomalydino_batched.yaml on the tiny DINOv2 (guards: 6 images of
    9 patches per category) over a vivid synthetic target of 40 px files, maps saved; its results.json."""
    guarded = ["method.batched_guards=true", "method.masked_categories=[cells]"]
    return tiny_dino_run(tmp_path, run_dir, "anomalydino_batched", 1, *guarded, *extra)


def test_a_batched_run_is_transductive_and_two_processes_equal_one(tmp_path):
    """protocol.shots=0 runs the batched zero-shot pass (results say transductive); maps at the files' size;
    a 2-process DDP evaluation (ddp_spawn, CPU) gives the one-process results and image scores exactly (with
    one thread per process on both sides: with two threads in the single process the float32 matrix products
    round differently, 6e-8 in the scores)."""
    import numpy as np

    one = batched_run(tmp_path, tmp_path / "one")
    assert one["protocol"]["name"] == "transductive" and "draws" not in one
    target = one["targets"]["synthetic"]
    assert set(target["categories"]) == {"ring", "cells"} and 0 <= target["mean"]["image_auroc"] <= 1
    saved = np.load(tmp_path / "one" / "maps" / "synthetic" / "ring" / "test" / "hole" / "000.npy")
    assert saved.shape == (40, 40)  # the file's size, not the 42 px input
    two = batched_run(tmp_path, tmp_path / "two", "trainer.strategy=ddp_spawn", "trainer.devices=2")
    assert one["targets"] == two["targets"]
    scores = Path("maps") / "synthetic" / "image_scores.csv"
    assert (tmp_path / "one" / scores).read_text() == (tmp_path / "two" / scores).read_text()


def test_the_authors_rules_refuse_a_run_where_their_code_fails(tmp_path, capsys):
    """Without guards the tiny category (k = int(0.001 x 45) = 0) is refused in a line naming the switch."""
    from pipelines.cli import main

    batched_run(tmp_path, tmp_path / "ok")
    args = ["run", str(tmp_path / "anomalydino_batched.yaml"), "logger.wandb.mode=disabled"]
    tiny = ["method.backbone.name=zsad-tiny-dinov2", "method.backbone.pretrained=null"]
    capsys.readouterr()
    code = main([*args, *tiny, "method.backbone.image_size=42", f"run_dir={tmp_path / 'refused'}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("zsad: error: AnomalyDINO batched zero-shot: k = int(0.001 x 45")
    assert "method.batched_guards=true" in err


def test_a_category_is_scored_before_the_next_ones_images_are_encoded(tmp_path):
    """The pass holds one category's patches at a time (transductive.population_stream): the first category
    is scored as soon as its images are encoded, before the next category's are."""
    from unittest import mock

    from lightning_modules.anomalydino import module as module_file
    from lightning_modules.anomalydino.model import AnomalyDINO

    events: list[str] = []
    encode, score = AnomalyDINO.encode, module_file.category_scores

    def encoding(self, images):
        events.append("encode")
        return encode(self, images)

    def scoring(*args, **kwargs):
        events.append("score")
        return score(*args, **kwargs)

    with (
        mock.patch.object(AnomalyDINO, "encode", encoding),
        mock.patch.object(module_file, "category_scores", scoring),
    ):
        batched_run(tmp_path, tmp_path / "run", "targets.0.eval_batch_size=2")
    assert events.count("score") == 2 and events.count("encode") >= 4
    assert events.index("score") < len(events) - 1 - events[::-1].index("encode")  # before the last encode


def test_reference_keys_set_for_a_batched_pass_are_warned_once(caplog):
    """At protocol.shots=0 there are no references to rotate or neighbours to average: such a key away from
    its default changes nothing, and is warned once per run; at their defaults nothing is said."""
    from unittest import mock

    from lightning_modules.anomalydino.module import AnomalyDINOModule

    def warnings_of(*overrides: str) -> list[str]:
        cfg = to_object(compose("demo", ["method=anomalydino_tiny", *overrides])).method
        module = AnomalyDINOModule(cfg)
        trainer = mock.Mock(is_global_zero=True)
        caplog.clear()
        with (
            mock.patch.object(
                AnomalyDINOModule, "trainer", new_callable=mock.PropertyMock, return_value=trainer
            ),
            caplog.at_level("WARNING", logger="lightning_modules.anomalydino.module"),
        ):
            module._warn_about_reference_keys()
            module._warn_about_reference_keys()  # the next target: not again
        return [r.getMessage() for r in caplog.records]

    (warned,) = warnings_of("method.rotate_references=true", "method.num_neighbours=3")
    assert warned.startswith("method.num_neighbours=3, method.rotate_references=True: a few-shot key")
    assert warnings_of() == []
