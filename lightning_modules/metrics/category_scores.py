"""Image scores that depend on a whole category: a method scores each image with a few parts, and a rule
turns the parts of all test images of a category into their scores once the category is complete.

VAND's few-shot test (APRIL-GAN's ``test.py``) is one: an image's score is the mean of its zero-shot
probability and the maximum of its map min-max normalised over the category's test images. The
evaluator applies the rule to each category's de-duplicated samples (the same set in one process or
gathered from all under DDP), so the numbers do not depend on batches or processes; callbacks that keep
per-image scores (the saved maps' ``image_scores.csv``) apply it at the end of the epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class CategoryScoreRule:
    """``parts`` numbers per image (``predict_batch`` returns scores ``[B, parts]``); ``combine`` maps the
    ``[n, parts]`` parts of one category's test images to their ``[n]`` scores; ``per_image`` gives a score
    from one image's parts alone, for what must rank images before their category is complete (the
    evaluation pictures' gallery)."""

    name: str
    parts: int
    combine: Callable[[Tensor], Tensor]
    per_image: Callable[[Tensor], Tensor]


def combined_scores(
    rule: CategoryScoreRule,
    category_ids: Sequence[int],
    parts: Tensor,
    populations: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
) -> Tensor:
    """The rule applied per category: ``parts`` ``[n, P]`` of distinct samples, ``category_ids`` ``[n]``.
    ``populations`` (per category id, ``DatasetIndex.category_populations``) applies it per population
    instead: the rows of one object (MVTec LOCO's) are combined together; ``image_ids`` (per row, an id of
    its image file) counts an image that several rows hold once, with its first row's parts, and gives
    every row of it that score."""
    ids = torch.as_tensor(category_ids, dtype=torch.long).reshape(-1)
    if populations is not None:
        ids = torch.as_tensor(populations, dtype=torch.long)[ids]
    images = (
        torch.arange(len(ids))
        if image_ids is None
        else torch.as_tensor(image_ids, dtype=torch.long).reshape(-1)
    )
    scores = torch.zeros(parts.shape[0], dtype=torch.float64)
    for group in torch.unique(ids).tolist():
        rows = (ids == group).nonzero().flatten()
        unique, inverse = torch.unique(images[rows], return_inverse=True)
        first = torch.full((len(unique),), len(rows), dtype=torch.long)
        first = first.scatter_reduce(0, inverse, torch.arange(len(rows)), reduce="amin")
        combined = rule.combine(parts[rows[first]].double()).double().cpu()
        scores[rows] = combined[inverse]
    return scores
