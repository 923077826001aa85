"""Pairing and the visual reference score against brute-force computations."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.dual_image.reference import (
    StreamingAggregate,
    pair_partners,
    partner_count,
    reference_distances,
)
from lightning_modules.ops import l2_normalize


def _embeddings(n: int, seed: int = 0) -> torch.Tensor:
    return l2_normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("strategy", ["random", "random_cycle", "nearest"])
@pytest.mark.parametrize("k", [1, 2, 4, -1])
def test_pairing_is_deterministic_per_seed_and_never_self(strategy, k):
    emb = _embeddings(7)
    first = pair_partners(emb, strategy, k, torch.Generator().manual_seed(5))
    again = pair_partners(emb, strategy, k, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert first.shape == (7, partner_count(7, k))
    for i, row in enumerate(first.tolist()):
        assert i not in row and len(set(row)) == len(row)


def test_random_cycle_pairing_changes_with_the_seed_and_is_a_cycle():
    emb = _embeddings(9)
    outcomes = {
        tuple(pair_partners(emb, "random_cycle", 1, torch.Generator().manual_seed(s))[:, 0].tolist())
        for s in range(6)
    }
    assert len(outcomes) > 1
    partners = pair_partners(emb, "random_cycle", 1, torch.Generator().manual_seed(3))[:, 0]
    assert sorted(partners.tolist()) == list(range(9))  # every image is the reference of exactly one other
    seen, i = set(), 0
    while i not in seen:
        seen.add(i)
        i = int(partners[i])
    assert len(seen) == 9  # one cycle through all images


def _expected_mutual(order: list[int], k: int) -> dict[int, list[int]]:
    """The documented rule written out: groups of k + 1 along the permutation; leftovers borrow the first
    images of the group before them."""
    size, n = k + 1, len(order)
    full = n - n % size
    expected = {}
    for start in range(0, full, size):
        group = order[start : start + size]
        for member in group:
            expected[member] = [m for m in group if m != member]
    leftovers = order[full:]
    for member in leftovers:
        expected[member] = [m for m in leftovers if m != member] + order[full - size :][
            : k - len(leftovers) + 1
        ]
    return expected


@pytest.mark.parametrize(("n", "k"), [(8, 1), (9, 1), (9, 2), (10, 2), (11, 3)])
def test_random_pairing_forms_mutual_groups_from_the_seeded_permutation(n, k):
    seed = 4
    partners = pair_partners(_embeddings(n), "random", k, torch.Generator().manual_seed(seed))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    expected = _expected_mutual(order, k)
    assert {i: partners[i].tolist() for i in range(n)} == expected
    mutual = [i for i in range(n) if all(i in partners[j].tolist() for j in partners[i].tolist())]
    assert len(mutual) == n - n % (k + 1)  # every image of a full group is its partners' partner
    if k == 1 and n % 2 == 0:  # the abstract's image pairs: a perfect matching
        assert all(int(partners[int(partners[i, 0]), 0]) == i for i in range(n))
    if k == 1 and n % 2 == 1:  # the last image of the permutation references the first of the last pair
        assert partners[order[-1]].tolist() == [order[-3]]


def test_nearest_pairing_takes_the_most_similar_other_image():
    emb = _embeddings(6, seed=1)
    partners = pair_partners(emb, "nearest", 2, torch.Generator())
    sim = emb @ emb.t()
    for i in range(6):
        order = [j for j in sorted(range(6), key=lambda j: -float(sim[i, j])) if j != i]
        assert partners[i].tolist() == order[:2]


def test_small_categories():
    assert pair_partners(_embeddings(1), "random", 1, torch.Generator()).shape == (1, 0)
    assert pair_partners(_embeddings(2), "nearest", 4, torch.Generator()).tolist() == [[1], [0]]
    assert pair_partners(_embeddings(3), "random", -1, torch.Generator()).tolist() == [[1, 2], [0, 2], [0, 1]]


def _brute_force(queries, bank, partners, aggregate, fraction=0.3):
    """Per query patch: for each partner 1 - max cosine over the partner's patches, aggregated; mean over layers."""
    b, k = partners.shape
    layers = list(queries)
    n_patches = queries[layers[0]].shape[1]
    out = torch.zeros(b, n_patches)
    for i in range(b):
        for p in range(n_patches):
            per_layer = []
            for layer in layers:
                d = []
                for j in partners[i].tolist():
                    best = max(
                        float(queries[layer][i, p] @ bank[layer][j, q]) for q in range(bank[layer].shape[1])
                    )
                    d.append(1.0 - best)
                if aggregate == "mean":
                    per_layer.append(sum(d) / len(d))
                elif aggregate == "min":
                    per_layer.append(min(d))
                else:
                    keep = max(1, math.floor(fraction * len(d)))
                    per_layer.append(sum(sorted(d)[:keep]) / keep)
            out[i, p] = sum(per_layer) / len(per_layer)
    return out


def _bank(n=6, patches=5, width=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {layer: l2_normalize(torch.randn(n, patches, width, generator=g)) for layer in (3, 5)}


@pytest.mark.parametrize("aggregate", ["mean", "min", "interval_mean"])
def test_visual_score_equals_brute_force(aggregate):
    bank = _bank()
    rows = torch.tensor([0, 3, 5])
    queries = {layer: tokens[rows] for layer, tokens in bank.items()}
    partners = pair_partners(torch.eye(6), "random", 2, torch.Generator().manual_seed(0))[rows]
    got = reference_distances(queries, bank, partners, aggregate, chunk=1)
    torch.testing.assert_close(got, _brute_force(queries, bank, partners, aggregate), atol=1e-5, rtol=1e-5)


def test_mutual_scoring_interval_mean_equals_direct_computation():
    """k -> all other images, the mean of the lowest 30% of per-partner distances, streamed in chunks of 3."""
    n = 12
    bank = _bank(n=n, patches=4, width=3, seed=2)
    partners = pair_partners(torch.eye(n), "random", -1, torch.Generator())
    got = reference_distances(bank, bank, partners, "interval_mean", fraction=0.3, chunk=3)
    keep = math.floor(0.3 * (n - 1))  # 3 of 11 partners
    expected = []
    for tokens in bank.values():
        sim = torch.einsum("apc,bqc->abpq", tokens, tokens).amax(-1)  # [query, partner, patch]
        d = 1 - sim
        d[torch.arange(n), torch.arange(n)] = float("inf")  # never itself
        expected.append(d.sort(dim=1).values[:, :keep].mean(dim=1))
    torch.testing.assert_close(got, torch.stack(expected).mean(0), atol=1e-6, rtol=1e-6)
    # the chunk size only changes memory, not the result
    torch.testing.assert_close(
        reference_distances(bank, bank, partners, "interval_mean", chunk=16), got, atol=1e-6, rtol=1e-6
    )


def test_streaming_aggregate_keeps_only_the_lowest_values():
    agg = StreamingAggregate("interval_mean", total=10, fraction=0.3)
    values = torch.rand(2, 10, 4)
    for start in range(0, 10, 4):
        agg.update(values[:, start : start + 4])
        assert agg.state.shape[1] <= 3
    torch.testing.assert_close(agg.result(), values.sort(dim=1).values[:, :3].mean(1))
    with pytest.raises(ValueError, match="aggregate"):
        StreamingAggregate("median", total=3)
