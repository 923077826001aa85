"""Visual references among the test images of one category: pairing and patch-matching scores.

- Pairing (:func:`pair_partners`): ``random`` (default) cuts a seeded permutation into groups of ``k + 1``
  images that are each other's references (k = 1: mutual pairs, "each image as a visual reference for the
  other" of the paper's abstract); ``random_cycle`` arranges the permutation in a cycle and gives each image
  the next ``k`` images (A->B->C->...; k = 1: every image is the reference of exactly one other, not mutual);
  ``nearest`` takes the ``k`` most similar class embeddings; ``k = -1`` (or ``k >= n - 1``) takes every
  other image. An image is never its own partner.
- Score (:func:`reference_distances`): per partner ``d_j[p] = 1 - max_q cos(F[p], F_j[q])`` on L2-normalised
  tokens, aggregated over partners (mean, minimum, or the interval mean of MuSc-style mutual scoring:
  the mean of the lowest ``fraction`` of the per-partner distances) and averaged over layers. Partners are
  streamed in chunks, so memory is ``B x chunk x N x N`` similarities whatever the number of partners
  (the interval mean keeps a running buffer of the lowest values, ``B x m x N``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lightning_modules.dual_image.config import AGGREGATES, PAIRINGS


def partner_count(n: int, k: int) -> int:
    """Partners per image in a category of ``n`` images (``k = -1``: all others)."""
    return max(n - 1, 0) if k < 0 else min(k, max(n - 1, 0))


def pair_partners(
    class_embeddings: torch.Tensor, strategy: str, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Partner indices ``[n, k']`` for the ``n`` images of one category (rows: images in bank order)."""
    if strategy not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {strategy!r}")
    n = class_embeddings.shape[0]
    k = partner_count(n, k)
    if k == n - 1:  # every other image, in bank order
        others = torch.arange(n).expand(n, n)
        return others[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)
    if strategy == "random":
        return mutual_groups(torch.randperm(n, generator=generator), k)
    if strategy == "random_cycle":
        order = torch.randperm(n, generator=generator)
        partners = torch.empty(n, k, dtype=torch.long)
        for step in range(1, k + 1):
            partners[order, step - 1] = order.roll(-step)
        return partners
    similarity = class_embeddings.float().cpu() @ class_embeddings.float().cpu().t()
    similarity.fill_diagonal_(-math.inf)
    return torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :k]


def mutual_groups(order: torch.Tensor, k: int) -> torch.Tensor:
    """Partners ``[n, k]``: ``order`` cut into consecutive groups of ``k + 1``; each member's partners are
    the other members of its group, in group order.

    When ``n`` is not a multiple of ``k + 1`` [reconstruction: the abstract does not say], the ``r`` images
    left over form a last, smaller group; each takes the other ``r - 1`` leftovers plus the first
    ``k - r + 1`` images of the group before it (those references are one-way: the earlier group keeps its
    own partners). With k = 1 and an odd count, the last image of the permutation is scored against the
    first image of the last pair. Needs ``n >= k + 1`` (``pair_partners`` caps ``k`` at ``n - 1``).
    """
    n, size = order.numel(), k + 1
    partners = torch.empty(n, k, dtype=torch.long)
    full = (n // size) * size
    for start in range(0, full, size):
        group = order[start : start + size]
        for j in range(size):
            partners[group[j]] = torch.cat([group[:j], group[j + 1 :]])
    leftovers = order[full:]
    if leftovers.numel():
        borrowed = order[full - size : full - size + k - leftovers.numel() + 1]
        for j in range(leftovers.numel()):
            partners[leftovers[j]] = torch.cat([leftovers[:j], leftovers[j + 1 :], borrowed])
    return partners


class StreamingAggregate:
    """Aggregate per-partner distances ``[B, c, N]`` arriving in chunks, without keeping them all."""

    def __init__(self, kind: str, total: int, fraction: float = 0.3) -> None:
        if kind not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {kind!r}")
        self.kind = kind
        self.total = total
        self.keep = max(1, int(math.floor(fraction * total)))
        self.state: torch.Tensor | None = None

    def update(self, distances: torch.Tensor) -> None:
        if self.kind == "mean":
            part = distances.sum(dim=1)
            self.state = part if self.state is None else self.state + part
        elif self.kind == "min":
            part = distances.amin(dim=1)
            self.state = part if self.state is None else torch.minimum(self.state, part)
        else:
            merged = distances if self.state is None else torch.cat([self.state, distances], dim=1)
            self.state = merged.topk(min(self.keep, merged.shape[1]), dim=1, largest=False).values

    def result(self) -> torch.Tensor:
        if self.kind == "mean":
            return self.state / self.total
        if self.kind == "min":
            return self.state
        return self.state.mean(dim=1)


def reference_distances(
    queries: Mapping[int, torch.Tensor],
    bank: Mapping[int, torch.Tensor],
    partners: torch.Tensor,
    aggregate: str = "mean",
    fraction: float = 0.3,
    chunk: int = 16,
) -> torch.Tensor:
    """Visual anomaly score per patch ``[B, N]``.

    Args:
        queries: layer -> ``[B, N, C]`` L2-normalised tokens of the images to score.
        bank: layer -> ``[n, N, C]`` L2-normalised tokens of the category's images.
        partners: ``[B, k]`` rows of ``bank`` that serve as references of each query (k >= 1).
    """
    b, k = partners.shape
    if k == 0:
        raise ValueError("an image needs at least one partner for a visual reference")
    per_layer = []
    for layer, query in queries.items():
        query = query.float()
        state = StreamingAggregate(aggregate, k, fraction)
        for start in range(0, k, max(1, chunk)):
            index = partners[:, start : start + chunk].to(bank[layer].device)
            refs = bank[layer][index].to(query)  # [B, c, N, C]
            similarity = torch.einsum("bpc,bjqc->bjpq", query, refs)
            state.update(1.0 - similarity.amax(dim=-1))  # [B, c, N]
        per_layer.append(state.result())
    return torch.stack(per_layer).mean(dim=0)
