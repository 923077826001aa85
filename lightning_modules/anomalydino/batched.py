"""AnomalyDINO's batched zero-shot scoring (dammsi/AnomalyDINO ``run_anomalydino_batched.py``), plain torch:
every test image of a category scored against the patches of all OTHER test images of the category.

Their ``calculate_cosine_distances(features_all, i, quantile=0.001)``: ``d = 1 - cos`` (float32, rows
L2-normalised) of image ``i``'s patches to the concatenated patches of every other image (M of them);
``q = kthvalue(d, int(quantile * M))`` per patch; the patch distance is the mean of the distances strictly
below ``q`` (``(d * (d < q)).sum() / (d < q).sum()``). Here the same per patch, in row chunks of bounded
memory, from the ``k`` smallest distances (``topk``: the values strictly below the k-th smallest are among
them), the image's own columns set to +inf instead of being left out (the k-th of the others is unchanged:
k <= M). ``dists_to_score``: the mean of the ``int(N * 0.01)`` largest patch distances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.errors import ZsadError

#: distances held at once while scoring: rows x (all patches of the category), float32 (256 MiB)
CHUNK_ELEMENTS = 1 << 26


def quantile_k(quantile: float, others: int, guards: bool) -> int:
    """Their ``int(quantile * M)``; 0 (their ``torch.kthvalue`` raises) is refused, or 1 with ``guards``."""
    k = int(quantile * others)
    if k >= 1:
        return k
    if guards and others >= 1:
        return 1
    raise ZsadError(
        f"AnomalyDINO batched zero-shot: k = int({quantile} x {others} patches of the other test images) = 0 "
        "(the authors' torch.kthvalue fails there): a category needs more images or patches, or set "
        "method.batched_guards=true (k >= 1)"
    )


@torch.no_grad()
def batched_patch_distances(
    features: torch.Tensor,
    counts: list[int],
    quantile: float = 0.001,
    guards: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``[P]`` float32 patch distances of a category's images: ``features`` ``[P, D]`` their patches one
    image after another (``counts[i]`` patches of image i, any grid), each patch scored against the patches
    of the other images. A patch with no distance strictly below its k-th is NaN (theirs: 0 / 0), or its
    k-th distance with ``guards``."""
    normed = F.normalize(features.float(), dim=1)
    total = len(normed)
    if sum(counts) != total:
        raise ValueError(f"counts sum to {sum(counts)}, features have {total} patches")
    out = normed.new_empty(total)
    rows = max(1, chunk_elements // max(total, 1))
    start = 0
    for count in counts:
        k = quantile_k(quantile, total - count, guards)
        for first in range(start, start + count, rows):
            last = min(first + rows, start + count)
            distances = 1 - normed[first:last] @ normed.T
            distances[:, start : start + count] = torch.inf  # the image itself: not among the others
            smallest = torch.topk(distances, k, dim=1, largest=False).values  # ascending
            kth = smallest[:, -1:]
            below = smallest < kth  # theirs: strictly below the k-th value
            number = below.sum(dim=1)
            mean = torch.where(below, smallest, 0.0).sum(dim=1) / number
            out[first:last] = torch.where(number > 0, mean, kth[:, 0]) if guards else mean
        start += count
    return out


def top_mean(distances: torch.Tensor, fraction: float, guards: bool) -> torch.Tensor:
    """Their ``dists_to_score`` of one image's ``[N]`` patch distances: the mean of the ``int(N * fraction)``
    largest; none (N < 1 / fraction: theirs NaN) is refused, or 1 with ``guards``."""
    top = int(len(distances) * fraction)
    if top < 1:
        if not guards:
            raise ZsadError(
                f"AnomalyDINO batched zero-shot: an image of {len(distances)} patches has int({len(distances)} "
                f"x {fraction}) = 0 top patches (the authors' score is the mean of nothing, NaN): use a larger "
                "input or set method.batched_guards=true (at least 1)"
            )
        top = 1
    return torch.topk(distances, top).values.mean()


def category_scores(
    features: torch.Tensor,
    counts: list[int],
    foreground: torch.Tensor,
    quantile: float = 0.001,
    top_fraction: float = 0.01,
    guards: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per image its ``[N_i]`` patch distances (0 on background patches: ``foreground`` ``[P]`` bool, their
    ``dists[~mask] = 0``) and ``[n]`` image scores, of a category's ``[P, D]`` patches (``counts``). A
    foreground NaN (theirs: roc_auc_score fails) is refused unless ``guards``."""
    distances = batched_patch_distances(features, counts, quantile, guards, chunk_elements)
    distances = torch.where(foreground.to(distances.device), distances, 0.0)
    nan = int(distances.isnan().sum())
    if nan:
        raise ZsadError(
            f"AnomalyDINO batched zero-shot: {nan} foreground patch(es) have no distance strictly below their "
            "k-th smallest (k = 1 or ties; the authors' 0 / 0 = NaN fails their roc_auc_score): set "
            "method.batched_guards=true (such a patch scores its k-th distance)"
        )
    per_image = list(distances.split(counts))
    scores = torch.stack([top_mean(d, top_fraction, guards) for d in per_image])
    return per_image, scores
