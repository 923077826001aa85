"""The transductive pass's category stream (lightning_modules/transductive.py): each category handed out
as soon as this process's loader has given all of it, so that one category's features are held at a time."""

from __future__ import annotations

import pytest
import torch
from baselines_support import one_torch_thread  # noqa: F401 (autouse: one torch thread, as DDP processes)

from lightning_modules.transductive import population_stream

drawn: list[int] = []  # the first row of each batch drawn so far


def _batches(rows: list[tuple[int, int]], size: int):
    """Batches of (sample id, category id), recording when each is drawn."""
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        drawn.append(start)
        yield {
            "sample_id": torch.tensor([s for s, _ in part]),
            "category_id": torch.tensor([c for _, c in part]),
        }


def _extract(batch):
    return [
        (s, c, f"item{s}")
        for s, c in zip(batch["sample_id"].tolist(), batch["category_id"].tolist(), strict=True)
    ]


def test_each_category_is_handed_out_once_its_samples_have_arrived_and_duplicates_are_dropped():
    # this process's share: categories 0, 1, 2 in order, then DistributedSampler's padding (sample 0 again)
    rows = [(0, 0), (2, 0), (4, 1), (6, 1), (8, 2), (10, 2), (0, 0)]
    expected = [frozenset({0, 2}), frozenset({4, 6}), frozenset({8, 10}), frozenset()]
    drawn.clear()
    seen = []
    for category, items in population_stream(_batches(rows, 2), 4, _extract, expected):
        seen.append((category, [s for s, _ in items], list(drawn)))
    assert seen == [
        (0, [0, 2], [0]),  # as soon as its batch is in: before category 1's batch is drawn
        (1, [4, 6], [0, 2]),
        (2, [8, 10], [0, 2, 4]),
        (3, [], [0, 2, 4]),  # none here: handed out (empty) in step, as every process does
    ]
    assert [s for _, items in population_stream(_batches(rows, 2), 4, _extract, expected) for s, _ in items] == [
        0, 2, 4, 6, 8, 10,
    ]  # the padding duplicate of a finished category is dropped  # fmt: skip


def test_without_known_samples_every_category_comes_at_the_end():
    rows = [(0, 0), (1, 1), (2, 0), (3, 1)]  # not in category order: nothing can be handed out early
    drawn.clear()
    seen = [
        (c, [s for s, _ in items], len(drawn))
        for c, items in population_stream(_batches(rows, 2), 2, _extract, None)
    ]
    assert seen == [(0, [0, 2], 2), (1, [1, 3], 2)]
    expected = [frozenset({0, 2}), frozenset({1, 3})]
    drawn.clear()
    seen = [
        (c, [s for s, _ in items], len(drawn))
        for c, items in population_stream(_batches(rows, 2), 2, _extract, expected)
    ]
    assert seen == [(0, [0, 2], 2), (1, [1, 3], 2)]  # interleaved: category 0 completes with the last batch


def _image_scores(tmp_path, method: list[str], rows: str, *extra: str) -> dict[str, set[str]]:
    """``zsad run`` of a transductive method on a generated MVTec LOCO with ``rows``, maps saved: per image
    file (a good image's ``@row`` dropped), the scores its rows got (repr)."""
    import csv

    from pipelines.cli import main
    from tests.datamodules.conftest import write_mvtec_loco

    root = tmp_path / "loco"
    if not root.is_dir():
        write_mvtec_loco(root, n_test=3)
    target = tmp_path / f"{rows}.yaml"
    # one image per batch: an image's features do not depend on the batch it is encoded in (DDP test)
    target.write_text(
        f"name: mvtec_loco\nroot: {root}\nnum_workers: 0\neval_batch_size: 1\noptions: {{rows: {rows}}}\n"
    )
    run_dir = tmp_path / f"run_{rows}{len(extra)}"
    args = [
        "run", "demo", f"targets=[{target}]", "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false",
        "eval.save_maps=true", f"run_dir={run_dir}", *method, *extra,
    ]  # fmt: skip
    assert main(args) == 0
    scores: dict[str, set[str]] = {}
    for row in csv.DictReader((run_dir / "maps" / "mvtec_loco" / "image_scores.csv").open()):
        scores.setdefault(row["image"].split("@")[0], set()).add(row["score"])
    return scores


TINY_TRANSDUCTIVE = {
    "musc": ["method=musc_tiny"],
    # each image adapted alone (tta.reset=image): the authors' policy carries the optimizer over from the
    # images before, whose order differs between the two row settings
    "dual_image": ["method=dual_image_tiny", "method.tta.reset=image"],
    "anomalydino_batched": [
        "method=anomalydino_batched", "method.backbone.name=zsad-tiny-dinov2", "method.backbone.pretrained=null",
        "method.backbone.image_size=42", "method.batched_guards=true",
    ],
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(TINY_TRANSDUCTIVE))
def test_the_rows_of_one_object_are_one_population(tmp_path, method):
    """MVTec LOCO by type: MuSc, AnomalyDINO's batched pass and Dual-Image's visual references use an object's
    test images together (each once) as the authors' code uses the object's folder, so every image gets the score it gets with the
    object as one category (rows=object), and a good image the same score in both rows."""
    by_type = _image_scores(tmp_path, TINY_TRANSDUCTIVE[method], "by_type")
    whole = _image_scores(tmp_path, TINY_TRANSDUCTIVE[method], "object")
    assert by_type.keys() == whole.keys() and len(whole) == 2 * 9
    assert all(len(scores) == 1 for scores in whole.values())
    assert by_type == whole  # one score per image, the object's


def test_two_processes_gather_the_rows_of_one_object_as_one_process_does(tmp_path):
    """Under DDP each process holds some of an object's samples of both rows (a good image may be on both,
    as two samples): the gathered population is the same images, and the scores are one process's."""
    method = TINY_TRANSDUCTIVE["musc"]
    one = _image_scores(tmp_path, method, "by_type")
    two = _image_scores(tmp_path, method, "by_type", "trainer.strategy=ddp_spawn", "trainer.devices=2")
    assert two == one
