"""Category-level image scores (VAND's few-shot rule): the evaluator combines each category's parts once it
is complete, whatever the batches, and drops padding duplicates before the min-max normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from lightning_modules.metrics import AnomalyEvaluator
from lightning_modules.metrics.category_scores import CategoryScoreRule
from lightning_modules.vand.model import FEW_SHOT_SCORE


def test_vand_few_shot_scores_are_normalised_over_the_whole_category_not_the_batch():
    torch.manual_seed(0)
    n = 10
    categories = torch.tensor([0, 1] * (n // 2))
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    parts = torch.stack([torch.rand(n), 3 * torch.rand(n) + labels], dim=1).double()
    evaluator = AnomalyEvaluator(["a", "b"], pixel_metrics=False, image_score_rule=FEW_SHOT_SCORE)
    for rows in (slice(0, 3), slice(3, 7), slice(7, n)):  # batches that split both categories
        evaluator.update(categories[rows], torch.arange(n)[rows], parts[rows], labels[rows])
    evaluator.update(categories[:1], torch.arange(1), parts[:1] + 100, labels[:1])  # a padding duplicate
    results = evaluator.compute()
    for c, name in enumerate(["a", "b"]):
        sel = (categories == c).numpy()
        p, m = parts[sel, 0].numpy(), parts[sel, 1].numpy()
        expected = 0.5 * (p + (m - m.min()) / (m.max() - m.min()))  # test.py's few-shot score
        y = labels[sel].numpy()
        assert results.per_category[name]["image_auroc"] == pytest.approx(roc_auc_score(y, expected))
        assert results.per_category[name]["image_ap"] == pytest.approx(average_precision_score(y, expected))


def test_a_category_whose_map_maxima_are_all_equal_keeps_the_zero_shot_ranking():
    parts = torch.tensor([[0.2, 1.0], [0.9, 1.0], [0.5, 1.0]])
    np.testing.assert_allclose(FEW_SHOT_SCORE.combine(parts).numpy(), [0.1, 0.45, 0.25])


def test_score_parts_of_the_wrong_shape_are_refused():
    evaluator = AnomalyEvaluator(["a"], pixel_metrics=False, image_score_rule=FEW_SHOT_SCORE)
    with pytest.raises(ValueError, match=r"takes \[B, 2\] score parts"):
        evaluator.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([0.5]), torch.tensor([0]))


# a rule whose result depends on which images a group holds and how often: each image's map part over the
# group's total
OVER_TOTAL = CategoryScoreRule(
    "over_total", 2, lambda p: p[:, 0] + p[:, 1] / p[:, 1].sum(), lambda p: p[:, 0]
)


def test_rows_of_one_object_are_combined_together_with_a_shared_image_once():
    """MVTec LOCO's rows: the rule sees the object's test images (both rows, a good image both list once, as
    the authors' code sees the object's folder), not one row's; another category stays alone."""
    categories = ["box_logical", "box_structural", "other"]
    rows = [  # (category, image, label): the box's good images 0-2 in both rows
        *[(0, i, 0) for i in range(3)], (0, 3, 1), (0, 4, 1),
        *[(1, i, 0) for i in range(3)], (1, 5, 1), (1, 6, 1),
        *[(2, 7 + i, i % 2) for i in range(5)],
    ]  # fmt: skip
    cats = torch.tensor([c for c, _, _ in rows])
    images = [i for _, i, _ in rows]
    labels = torch.tensor([y for _, _, y in rows])
    by_image = torch.tensor([  # (probability, map part) per image, chosen so that the group's total matters
        [0.5, 1], [0.1, 0.5], [0.2, 0.5], [0.3, 3], [0.05, 1], [0.6, 4], [0.4, 4],
        [0.1, 1], [0.9, 2], [0.3, 1], [0.7, 3], [0.2, 2],
    ])  # fmt: skip
    parts = by_image[images].double()  # a shared image's parts are the same in both rows
    evaluator = AnomalyEvaluator(
        categories,
        pixel_metrics=False,
        image_score_rule=OVER_TOTAL,
        populations=[0, 0, 1],
        image_ids=images,  # sample id i holds image images[i]
    )
    evaluator.update(cats, torch.arange(len(rows)), parts, labels)
    results = evaluator.compute()
    groups = {0: [0, 1, 2, 3, 4, 5, 6], 1: [7, 8, 9, 10, 11]}  # images per population, each once
    for c, name in enumerate(categories):
        group = groups[0 if c < 2 else 1]
        total = by_image[group, 1].double().sum()
        sel = (cats == c).numpy()
        row_images = [i for i, s in zip(images, sel, strict=True) if s]
        expected = (by_image[row_images, 0].double() + by_image[row_images, 1].double() / total).numpy()
        y = labels[sel].numpy()
        assert results.per_category[name]["image_auroc"] == pytest.approx(
            roc_auc_score(y, expected), abs=1e-12
        )
        if c == 0:  # the rule over the row alone (or the good images twice) would rank them otherwise here
            alone = (parts[sel, 0] + parts[sel, 1] / parts[sel, 1].sum()).numpy()
            assert roc_auc_score(y, alone) != pytest.approx(roc_auc_score(y, expected))
