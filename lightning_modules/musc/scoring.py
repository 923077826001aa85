"""MuSc's scoring pieces as plain torch, batched (the authors' code loops over images and image pairs).

- :func:`aggregate_neighbourhood` (LNAMD): one layer's patch tokens, layer-normalised over the whole
  token map, averaged over each ``r x r`` neighbourhood (zero padding counted, as their
  ``Unfold`` + ``adaptive_avg_pool1d``) and L2-normalised;
- :func:`mutual_scores` (MSM): each patch's distance to its nearest patch of every *other* image, and the
  mean of the smallest ``int((N - 1) * topmin_max)`` of those per-image distances;
- :func:`rescore_images` (RsCIN): min-max normalised image scores smoothed over each image's ``k`` most
  similar images (class-token cosine similarity), averaged over ``k_list``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError

# Elements of one block of the distance matrix (float32): 256 MiB on a GPU (large GEMMs keep it busy),
# 4 MiB on the CPU (blocks that stay in cache: faster there, benchmarks/speed_musc.py; the same numbers)
GPU_DISTANCE_BLOCK = 1 << 26
CPU_DISTANCE_BLOCK = 1 << 20


def distance_block(device: torch.device, elements: int | None = None) -> int:
    """``elements``, or the default block size for ``device`` when None."""
    if elements is not None:
        return int(elements)
    return GPU_DISTANCE_BLOCK if device.type == "cuda" else CPU_DISTANCE_BLOCK


def aggregate_neighbourhood(tokens: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """LNAMD for one layer: ``tokens`` ``[B, 1 + N, C]`` (class token first) -> ``[B, N, C]`` unit vectors.

    The layer norm has no affine part and normalises over all ``N * C`` values of an image (the authors
    build a fresh ``nn.LayerNorm([C, H, W])`` per call)."""
    if r < 1 or r % 2 == 0:
        raise ConfigError(f"musc r_list degrees must be odd and >= 1 (the neighbourhood is centred), got {r}")
    patches = tokens[:, 1:]
    b, n, c = patches.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    x = patches.transpose(1, 2).reshape(b, c, *grid)
    x = F.layer_norm(x, x.shape[1:])
    if r > 1:
        x = F.avg_pool2d(x, r, stride=1, padding=r // 2, count_include_pad=True)
    x = x.flatten(2).transpose(1, 2)
    return x / x.norm(dim=-1, keepdim=True)


def interval_count(others: int, fraction: float) -> int:
    """The authors' ``k``: a fraction below 1 is a share of the other images (floored), else a count."""
    return int(others * fraction) if fraction < 1 else int(fraction)


def mutual_scores(
    features: torch.Tensor,
    topmin_min: float = 0.0,
    topmin_max: float = 0.3,
    block_elements: int | None = None,
) -> torch.Tensor:
    """MSM: ``features`` ``[N, L, C]`` (all images of one set) -> patch scores ``[N, L]`` in float64.

    For every patch of image ``i`` and every other image ``j``: the distance to ``j``'s nearest patch.
    Over ``j``, the values ranked ``k_min .. k_max - 1`` from the smallest are averaged
    (``k = interval_count(N - 1, topmin)``). Distances are computed in blocks of query and reference
    images of at most ``block_elements`` entries (None: :func:`distance_block` of the device), never one
    image pair at a time unless a block holds only one."""
    n, length, c = features.shape
    k_max, k_min = interval_count(n - 1, topmin_max), interval_count(n - 1, topmin_min)
    if k_max < k_min:
        k_max, k_min = k_min, k_max
    if k_max - k_min < 1 or k_max > n - 1:
        raise ConfigError(
            f"musc mutual scoring of {n} images averages the ranks {k_min}..{k_max - 1} of the {n - 1} other "
            f"images: empty (topmin_min={topmin_min}, topmin_max={topmin_max}); a set needs more images "
            "(lower divide_num) or other topmin bounds"
        )
    per_block = max(1, distance_block(features.device, block_elements) // (length * length))
    queries = max(1, min(n, per_block))
    references = max(1, min(n, per_block // queries))
    flat = features.reshape(n * length, c)
    scores = torch.empty(n, length, dtype=torch.float64, device=features.device)
    for q0 in range(0, n, queries):
        q1 = min(n, q0 + queries)
        nearest = torch.empty(q1 - q0, length, n, dtype=features.dtype, device=features.device)
        for r0 in range(0, n, references):
            r1 = min(n, r0 + references)
            dist = torch.cdist(flat[q0 * length : q1 * length], flat[r0 * length : r1 * length])
            nearest[:, :, r0:r1] = dist.view(q1 - q0, length, r1 - r0, length).amin(dim=-1)
        own = torch.arange(q0, q1, device=features.device)
        nearest[torch.arange(q1 - q0, device=features.device), :, own] = float("inf")
        smallest = nearest.float().topk(k_max, dim=-1, largest=False, sorted=True).values
        scores[q0:q1] = smallest[..., k_min:].mean(dim=-1).double()
    return scores


def rescore_images(
    scores: torch.Tensor, class_embeddings: torch.Tensor | None, k_list: Sequence[int]
) -> torch.Tensor:
    """RsCIN: ``scores`` ``[N]`` re-scored with L2-normalised ``class_embeddings`` ``[N, D]``.

    ``k_list`` containing 0 (or no embeddings) returns ``scores`` unchanged, as the authors' code."""
    if class_embeddings is None or 0 in k_list:
        return scores
    n = scores.shape[0]
    if any(k < 0 or k > n for k in k_list):
        raise ConfigError(f"musc k_list {list(k_list)} needs 0 <= k <= the {n} images of a category")
    normalised = ((scores - scores.min()) / (scores.max() - scores.min())).float()
    similarity = (class_embeddings.float() @ class_embeddings.float().t()).float()
    rescored = []
    for k in k_list:
        keep = similarity.topk(k, dim=-1, largest=True).indices
        kept = torch.zeros_like(similarity).scatter_(1, keep, similarity.gather(1, keep))
        transition = torch.diag(1 / kept.sum(dim=1)) @ kept
        rescored.append(transition @ normalised.unsqueeze(-1))
    return torch.cat(rescored, dim=-1).mean(dim=-1)
