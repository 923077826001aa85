"""Two processes (Lightning ddp_spawn on CPU/gloo) give exactly the one-process result, although the
DistributedSampler pads with a duplicate: at the end of the epoch, and with categories finished (and their
pixels freed) one after another; the sample-level metrics (views grouped into samples) and sPRO (regions with
saturation areas) included."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.metrics import AnomalyEvaluator
from lightning_modules.metrics.distributed import expected_samples
from tests_support import quiet_trainer

CATEGORIES = ["disc", "weave", "cells"]
N_SAMPLES = 7  # odd: the distributed sampler must pad one rank


class TinyAnomalySet(Dataset):
    """Deterministic samples of three categories (sizes differ per category; 'cells' has no normals)."""

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(100 + i)
        cat = [0, 0, 0, 1, 1, 2, 2][i]
        label = [0, 1, 1, 0, 1, 1, 1][i]
        h, w = [(8, 8), (6, 10), (5, 5)][cat]
        amap = torch.rand(h, w, generator=g)
        mask = torch.zeros(h, w, dtype=torch.bool)
        if label:
            mask[1:3, 1 + i % 2 : 4] = True
            amap[mask] += 0.3
        return {"cat": cat, "sid": i, "score": float(amap.max()), "label": label, "map": amap, "mask": mask}


def collate(batch: list[dict]) -> dict:
    return {
        "cat": torch.tensor([b["cat"] for b in batch]),
        "sid": torch.tensor([b["sid"] for b in batch]),
        "score": torch.tensor([b["score"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch]),
        "map": [b["map"] for b in batch],
        "mask": [b["mask"] for b in batch],
    }


def update_from_batch(ev: AnomalyEvaluator, batch: dict) -> None:
    # One update per sample: sizes differ between categories.
    for j in range(len(batch["sid"])):
        ev.update(
            batch["cat"][j : j + 1],
            batch["sid"][j : j + 1],
            batch["score"][j : j + 1],
            batch["label"][j : j + 1],
            batch["map"][j][None],
            batch["mask"][j][None],
        )


def result_json(ev: AnomalyEvaluator) -> dict:
    res = ev.compute()
    return {
        "per_category": res.per_category,
        "missing": res.missing,
        "mean": res.mean,
        "num_images": res.num_images,
        "duplicates_dropped": res.duplicates_dropped,
    }


class EvalModule(pl.LightningModule):
    """Updates an AnomalyEvaluator in test_step; each rank writes what compute() returned."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.dummy = torch.nn.Linear(1, 1)  # DDP needs a parameter
        self.evaluator = AnomalyEvaluator(CATEGORIES, pixel_score_dtype=torch.float32)
        self.out_dir = out_dir
        self.seen = 0

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.seen += len(batch["sid"])
        update_from_batch(self.evaluator, batch)

    def on_test_epoch_end(self) -> None:
        out = result_json(self.evaluator)
        out["seen_on_rank"] = self.seen
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(out))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TinyAnomalySet(), batch_size=2, collate_fn=collate)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_two_process_ddp_spawn_equals_one_process(tmp_path):
    single = AnomalyEvaluator(CATEGORIES, pixel_score_dtype=torch.float32)
    for batch in DataLoader(TinyAnomalySet(), batch_size=3, collate_fn=collate):
        update_from_batch(single, batch)
    expected = json.loads(json.dumps(result_json(single)))  # same float round trip as the ranks' files

    trainer = quiet_trainer(strategy="ddp_spawn", devices=2)
    trainer.test(EvalModule(str(tmp_path)))
    for rank in (0, 1):
        got = json.loads(Path(tmp_path, f"rank{rank}.json").read_text())
        assert got.pop("seen_on_rank") == 4  # 7 samples padded to 8: the sampler did add a duplicate
        assert got.pop("duplicates_dropped") == 1
        expected_no_dup = dict(expected)
        assert expected_no_dup.pop("duplicates_dropped") == 0
        assert got == expected_no_dup
    assert expected["per_category"]["cells"]["image_auroc"] is None
    assert expected["per_category"]["disc"]["aupro"] is not None


# --- categories finished one by one under DDP (bounded memory) ---------------------------------------------
SIZES = [7, 1, 6, 2, 5]  # uneven; "b" has fewer samples than processes; 21 samples: one padding duplicate
UNEVEN = ["a", "b", "c", "d", "e"]
UNEVEN_CATEGORY = [ci for ci, n in enumerate(SIZES) for _ in range(n)]
BATCH = 3
EXTRAS = {"sample_metrics": True, "region_metrics": True, "spro_fpr_limit": 0.3}


class UnevenSet(Dataset):
    """Samples in category order with maps of one size (a batch may span two categories); two views per
    physical sample (``group``), and each anomalous one's mask is a region with a saturation area."""

    def __len__(self) -> int:
        return len(UNEVEN_CATEGORY)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(500 + i)
        cat = UNEVEN_CATEGORY[i]
        label = int(i % 3 != 0)
        amap = torch.rand(7, 9, generator=g)
        mask = torch.zeros(7, 9, dtype=torch.bool)
        if label:
            mask[1 + i % 3 : 4, 2 : 5 + i % 2] = True
            amap[mask] += 0.25
        return {"cat": cat, "sid": i, "score": float(amap.mean()), "label": label, "map": amap, "mask": mask}


def update_batch(ev: AnomalyEvaluator, batch: dict) -> None:
    masks = torch.stack(batch["mask"])
    ev.update(
        batch["cat"],
        batch["sid"],
        batch["score"],
        batch["label"],
        torch.stack(batch["map"]),
        masks,
        group_ids=batch["sid"] // 2,
        regions=masks[:, None],
        region_saturation=masks.flatten(1).sum(1, keepdim=True).double() / 2,
    )


def curves_json(ev: AnomalyEvaluator) -> dict:
    def plain(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {name: plain(dataclasses.asdict(c)) for name, c in ev.curves().items()}


class TwoEvaluatorsModule(pl.LightningModule):
    """Feeds the same batches to an evaluator that knows this process's samples (categories finished as
    they complete) and to one that does not (the end-of-epoch gather); writes what each computed."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.dummy = torch.nn.Linear(1, 1)
        self.out_dir = out_dir

    def on_test_epoch_start(self) -> None:
        own = expected_samples(self.trainer.test_dataloaders, UNEVEN_CATEGORY, len(UNEVEN))
        assert own is not None
        self.own_shares = [len(s) for s in own]
        self.bounded = AnomalyEvaluator(UNEVEN, samples_per_category=SIZES, expected_samples=own, **EXTRAS)
        self.fallback = AnomalyEvaluator(UNEVEN, samples_per_category=SIZES, **EXTRAS)
        self.received = 0

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.received += len(batch["sid"])
        update_batch(self.bounded, batch)
        update_batch(self.fallback, batch)

    def on_test_epoch_end(self) -> None:
        out = {
            "own_shares": self.own_shares,
            "received": self.received,
            **{
                name: {
                    "result": result_json(ev),
                    "curves": curves_json(ev),
                    "peak": ev.peak_stored_pixel_samples,
                    "left": ev.stored_pixel_samples,
                }
                for name, ev in (("bounded", self.bounded), ("fallback", self.fallback))
            },
        }
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(out))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(UnevenSet(), batch_size=BATCH, collate_fn=collate)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_ddp_finishes_categories_in_order_with_bounded_memory_and_one_process_results(tmp_path):
    single = AnomalyEvaluator(UNEVEN, samples_per_category=SIZES, **EXTRAS)
    for batch in DataLoader(UnevenSet(), batch_size=4, collate_fn=collate):
        update_batch(single, batch)
    expected = json.loads(json.dumps({"result": result_json(single), "curves": curves_json(single)}))
    assert expected["result"].pop("duplicates_dropped") == 0

    quiet_trainer(strategy="ddp_spawn", devices=2).test(TwoEvaluatorsModule(str(tmp_path)))
    for rank in (0, 1):
        got = json.loads(Path(tmp_path, f"rank{rank}.json").read_text())
        assert got["received"] == 11 and sum(got["own_shares"]) == 11 - rank  # rank 1 got the duplicate
        for name in ("bounded", "fallback"):
            assert got[name]["result"].pop("duplicates_dropped") == 1
            assert got[name]["result"] == expected["result"], (rank, name)
            assert got[name]["curves"] == expected["curves"], (rank, name)
        # finished one category after another: never more than the largest share and a batch held
        assert got["bounded"]["peak"] <= max(got["own_shares"]) + BATCH
        assert got["bounded"]["left"] == 0
        assert got["fallback"]["peak"] == got["fallback"]["left"] == 11  # everything until the end
    assert expected["result"]["per_category"]["b"]["pixel_auroc"] is not None  # a 1-sample category
    assert expected["result"]["per_category"]["a"]["sample_auroc"] is not None
    assert all(expected["result"]["per_category"][c]["spro"] is not None for c in UNEVEN)
