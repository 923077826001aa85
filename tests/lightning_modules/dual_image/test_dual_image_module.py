"""The dual-image module on a synthetic dataset: partners from the whole category, scores independent of
how the test set is split across processes, and the fused map / score against direct computations."""

from __future__ import annotations

import pytest
import torch
from dual_image_support import single_thread, tiny_method_config  # noqa: F401 - a fixture
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import ConfigError
from lightning_modules.dual_image import (
    DualImageCLIP,
    DualImageConfig,
    DualImageModule,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_dual_image_config(**visual) -> DualImageConfig:
    """``dual_image_tiny`` (visual layers 3 and 5) with image-space anomalies in the TTA and a fixed seed."""
    overrides = {f"visual.{key}": value for key, value in visual.items()}
    return tiny_method_config(
        "dual_image_tiny", templates_per_domain=1, seed=7, **overrides, **{"tta.image_anomalies": True}
    )


@pytest.fixture(scope="module")
def datamodule(synthetic_pair):
    cfg = DataConfig(name="synthetic", root=str(synthetic_pair[1]), eval_batch_size=5, num_workers=0)
    return AnomalyDataModule(cfg, image_size=32)


def _module(cfg, tiny_clip, datamodule) -> DualImageModule:
    module = DualImageModule(cfg, model=DualImageCLIP(cfg, *tiny_clip))
    module.bind_data(datamodule)
    return module


def _scores(module, loader) -> dict[int, tuple[float, torch.Tensor]]:
    out = {}
    for batch in loader:
        scores, maps = module.predict_batch(batch)
        for sample_id, score, amap in zip(batch["sample_id"].tolist(), scores, maps, strict=True):
            out[sample_id] = (float(score), amap.detach())
    return out


def test_scores_do_not_depend_on_how_the_test_set_is_split(tiny_clip, datamodule):
    """Two 'processes' (DistributedSampler shards, other batch sizes, separate modules) give every image the
    score and map it gets when one process evaluates the whole test set (TTA and image-space anomalies on)."""
    cfg = tiny_dual_image_config(k=2, pairing="random")
    whole = _scores(_module(cfg, tiny_clip, datamodule), datamodule.test_dataloader())
    dataset = datamodule.test_dataloader().dataset
    split = {}
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        split.update(
            _scores(_module(cfg, tiny_clip, datamodule), DataLoader(dataset, batch_size=2, sampler=sampler))
        )
    assert set(split) == set(whole) == set(range(len(dataset)))
    for sample_id, (score, amap) in whole.items():
        assert split[sample_id][0] == pytest.approx(score, abs=1e-5)
        torch.testing.assert_close(split[sample_id][1], amap, atol=1e-5, rtol=1e-4)


def test_partners_come_from_the_whole_category_and_never_self(tiny_clip, datamodule):
    module = _module(tiny_dual_image_config(k=-1, aggregate="interval_mean"), tiny_clip, datamodule)
    records = datamodule.test_index.records
    for category in datamodule.categories:
        bank = module.category_bank(category)
        positions = [i for i, r in enumerate(records) if r.category == category]
        assert sorted(bank.rows) == positions
        n = len(positions)
        assert bank.partners.shape == (n, n - 1) and bank.tokens[3].shape[0] == n
        for row, partners in enumerate(bank.partners.tolist()):
            assert row not in partners


def test_fused_map_and_score_equal_direct_computation(tiny_clip, datamodule):
    cfg = tiny_dual_image_config(k=1, pairing="nearest", weight=0.7)
    cfg.tta.enabled = False
    cfg.image_score_map_weight = 0.25
    module = _module(cfg, tiny_clip, datamodule)
    module.tta = None
    batch = next(iter(datamodule.test_dataloader()))
    scores, maps = module.predict_batch(batch)

    model = module.model
    categories = module.batch_categories(batch)
    bank = module.category_bank(categories[0])
    text = module.batch_text(categories)
    out = model.text_branch(batch["image"], text)
    visual = torch.zeros(len(categories), 4, 4)
    for i, sample_id in enumerate(batch["sample_id"].tolist()):
        partner = int(bank.partners[bank.rows[sample_id]][0])
        partner_id = [p for p, r in bank.rows.items() if r == partner][0]
        assert partner_id != sample_id
        own = model.encode(batch["image"][i : i + 1], [3, 5]).reference_tokens
        ref = model.encode(
            datamodule.test_dataloader().dataset[partner_id]["image"][None], [3, 5]
        ).reference_tokens
        per_layer = [1 - (own[layer][0] @ ref[layer][0].t()).amax(dim=1) for layer in (3, 5)]
        visual[i] = torch.stack(per_layer).mean(0).view(4, 4)
    fused = out.grid + 0.7 * visual
    torch.testing.assert_close(
        scores, 0.75 * out.image_scores + 0.25 * fused.flatten(1).amax(1), atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(maps, model.upsample(fused, (32, 32)), atol=1e-5, rtol=1e-4)


def test_wrong_settings_fail_when_the_model_is_built(tiny_clip):
    with pytest.raises(ConfigError, match=r"visual\.pairing.*visual\.k"):
        DualImageCLIP(tiny_dual_image_config(pairing="farthest", k=0), *tiny_clip)
    with pytest.raises(ConfigError, match=r"visual\.layers"):
        DualImageCLIP(tiny_dual_image_config(layers=[9]), *tiny_clip)
