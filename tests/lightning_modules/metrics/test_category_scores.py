"""Category-level image scores (VAND's few-shot rule): the evaluator combines each category's parts once it
is complete, whatever the batches, and drops padding duplicates before the min-max normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from lightning_modules.metrics import AnomalyEvaluator
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
