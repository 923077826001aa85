"""MuSc's scoring pieces against direct, loop-by-loop references of the authors' definitions
(models/modules/_LNAMD.py, _MSM.py, _RsCIN.py of xrli-U/MuSc); their own functions' outputs on the
same inputs are checked by test_musc_parity.py through the parity fixture."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError
from lightning_modules.musc.scoring import aggregate_neighbourhood, mutual_scores, rescore_images


def _tokens(b: int = 6, grid: int = 4, c: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1 + grid * grid, c, generator=g, dtype=torch.float64) * 2 + 0.5


def _lnamd_reference(tokens: torch.Tensor, grid: int, r: int) -> torch.Tensor:
    """Layer norm over all values of an image, then each patch the mean of its r x r neighbourhood with
    zeros outside the map (divided by r*r), then unit length."""
    b, _, c = tokens.shape
    x = tokens[:, 1:].reshape(b, grid, grid, c)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-5)
    out = torch.zeros_like(x)
    half = r // 2
    for i in range(grid):
        for j in range(grid):
            for di in range(-half, half + 1):
                for dj in range(-half, half + 1):
                    if 0 <= i + di < grid and 0 <= j + dj < grid:
                        out[:, i, j] += x[:, i + di, j + dj]
    out = (out / (r * r)).reshape(b, grid * grid, c)
    return out / out.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_matches_the_neighbourhood_mean_of_layer_normed_tokens(r):
    tokens = _tokens()
    ours = aggregate_neighbourhood(tokens, (4, 4), r)
    assert torch.allclose(ours, _lnamd_reference(tokens, 4, r), atol=1e-12)


def test_lnamd_refuses_an_even_degree():
    with pytest.raises(ConfigError, match="odd"):
        aggregate_neighbourhood(_tokens(), (4, 4), 2)


def _msm_reference(z: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    n, length, _ = z.shape
    scores = torch.zeros(n, length, dtype=torch.float64)
    for i in range(n):
        for p in range(length):
            nearest = sorted(
                min(float(torch.dist(z[i, p], z[j, q])) for q in range(length)) for j in range(n) if j != i
            )
            scores[i, p] = sum(nearest[k_min:k_max]) / (k_max - k_min)
    return scores


@pytest.mark.parametrize("block_elements", [1, 40, 1 << 26, None])
def test_msm_averages_the_smallest_nearest_patch_distances_to_the_other_images(block_elements):
    z = aggregate_neighbourhood(_tokens(b=11), (4, 4), 1).float()
    ours = mutual_scores(z, block_elements=block_elements)
    # 10 other images: k_max = int(10 * 0.3) = 3 (the authors' topmin_max), k_min = 0
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, _msm_reference(z.double(), 0, 3), atol=1e-5)


def test_msm_interval_drops_the_smallest_ranks():
    z = aggregate_neighbourhood(_tokens(b=11), (4, 4), 3).float()
    ours = mutual_scores(z, topmin_min=0.1, topmin_max=0.5, block_elements=50)
    assert torch.allclose(ours, _msm_reference(z.double(), 1, 5), atol=1e-5)


def test_msm_refuses_a_set_too_small_for_its_interval():
    # 4 images: int(3 * 0.3) = 0 ranks; the authors' code averages an empty tensor (NaN)
    with pytest.raises(ConfigError, match="more images"):
        mutual_scores(torch.randn(4, 16, 8))


def _rscin_reference(scores: torch.Tensor, emb: torch.Tensor, k_list: list[int]) -> torch.Tensor:
    s = (scores - scores.min()) / (scores.max() - scores.min())
    sim = emb @ emb.t()
    out = torch.zeros(len(scores), dtype=torch.float64)
    for k in k_list:
        for i in range(len(scores)):
            neighbours = sorted(range(len(scores)), key=lambda j: -float(sim[i, j]))[:k]
            weights = sim[i, neighbours]
            out[i] += float((weights * s[neighbours]).sum() / weights.sum()) / len(k_list)
    return out


@pytest.mark.parametrize("k_list", [[1, 2, 3], [1, 8, 9]])
def test_rscin_smooths_each_score_over_its_most_similar_images(k_list):
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(9, generator=g, dtype=torch.float64)
    emb = torch.nn.functional.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=-1)
    ours = rescore_images(scores, emb, k_list)
    assert torch.allclose(ours.double(), _rscin_reference(scores, emb, k_list), atol=1e-6)


def test_rscin_with_zero_in_k_list_keeps_the_raw_scores():
    scores = torch.tensor([3.0, 1.0, 2.0])
    assert rescore_images(scores, torch.eye(3), [0]) is scores
    with pytest.raises(ConfigError, match="k_list"):
        rescore_images(scores, torch.eye(3), [1, 4])
