"""CMLE: a correlation structure learned from text, imposed on the vision latent space (docs/methods.md#cmg).

Locally-linear embedding weights [design choice]: each sample's text embedding is reconstructed from its
``k`` nearest neighbours' embeddings with weights that sum to 1 (regularised local Gram solve, as
scikit-learn's LLE). The vision detector's latent codes are then asked to follow the same structure,
``L = ||(I - W) Z||_F^2`` (averaged over rows), so images whose texts are alike get close codes.
"""

from __future__ import annotations

import torch

KNN_CHUNK = 4096  # rows of the distance matrix computed at once (global matrices over large training sets)


def nearest_neighbours(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[n, k]`` of each row's ``k`` nearest other rows (Euclidean; never the row itself)."""
    n = embeddings.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"need 1 <= k <= n - 1 neighbours, got k={k} for n={n}")
    x = embeddings.double()
    out = []
    for start in range(0, n, KNN_CHUNK):
        rows = x[start : start + KNN_CHUNK]
        dist = torch.cdist(rows, x)
        dist[torch.arange(rows.shape[0]), torch.arange(start, start + rows.shape[0])] = float("inf")
        # Ties (identical texts) are broken by index so that the result is deterministic.
        order = torch.argsort(dist, dim=1, stable=True)
        out.append(order[:, :k])
    return torch.cat(out)


def lle_weights(embeddings: torch.Tensor, k: int, reg: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Locally-linear reconstruction weights: ``(neighbour indices [n, k], weights [n, k])``, rows sum to 1.

    ``w_i = argmin ||t_i - sum_j w_ij t_j||^2`` s.t. ``sum_j w_ij = 1``: solve ``(C + R I) w = 1`` with the
    local Gram ``C = (T_N - t_i)(T_N - t_i)^T`` and ``R = reg * trace(C)`` (``reg`` when the trace is 0,
    e.g. identical texts, which then get uniform weights), then normalise.
    """
    k = min(k, embeddings.shape[0] - 1)
    idx = nearest_neighbours(embeddings, k)
    x = embeddings.double()
    diff = x[idx] - x[:, None, :]  # [n, k, D]
    gram = diff @ diff.transpose(1, 2)  # [n, k, k]
    trace = gram.diagonal(dim1=1, dim2=2).sum(-1)
    ridge = torch.where(trace > 0, reg * trace, torch.full_like(trace, reg))
    gram = gram + ridge[:, None, None] * torch.eye(k, dtype=x.dtype, device=x.device)
    w = torch.linalg.solve(gram, torch.ones(x.shape[0], k, 1, dtype=x.dtype, device=x.device)).squeeze(-1)
    w = w / w.sum(dim=1, keepdim=True)
    return idx, w.to(embeddings.dtype)


def dense_weights(idx: torch.Tensor, weights: torch.Tensor, n: int) -> torch.Tensor:
    """The matrix ``W [len(idx), n]`` with ``weights`` at the neighbour positions, zero elsewhere."""
    dense = weights.new_zeros(idx.shape[0], n)
    return dense.scatter_(1, idx, weights)


def cmle_loss(codes: torch.Tensor, neighbour_codes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_i ||z_i - sum_j w_ij z_j||^2`` = ``||(I - W) Z||_F^2 / n``.

    ``codes [n, d]``, ``neighbour_codes [n, k, d]`` (the codes of each row's neighbours), ``weights [n, k]``.
    """
    if codes.shape[0] == 0:
        return codes.new_zeros(())
    reconstruction = (weights.to(codes.dtype)[..., None] * neighbour_codes).sum(dim=1)
    return (codes - reconstruction).pow(2).sum(dim=-1).mean()


def batch_cmle_loss(codes: torch.Tensor, text_embeddings: torch.Tensor, k: int, reg: float) -> torch.Tensor:
    """CMLE with the matrix computed over one batch's texts (``scope: batch``); 0 for a single sample."""
    if codes.shape[0] < 2:
        return codes.new_zeros(())
    idx, w = lle_weights(text_embeddings.to(codes.device), k, reg)
    return cmle_loss(codes, codes[idx], w)


class GlobalStructure(torch.nn.Module):
    """``scope: global``: one matrix over every training text, and a bank of the latest (detached) code of
    each training sample, so a batch row can be reconstructed from neighbours outside the batch.

    Rows whose neighbours have not been seen yet (early in the first epoch) are skipped.
    """

    def __init__(self, text_embeddings: torch.Tensor, k: int, reg: float, latent_dim: int) -> None:
        super().__init__()
        idx, w = lle_weights(text_embeddings, k, reg)
        n = text_embeddings.shape[0]
        self.register_buffer("idx", idx, persistent=False)
        self.register_buffer("weights", w.float(), persistent=False)
        self.register_buffer("bank", torch.zeros(n, latent_dim), persistent=False)
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool), persistent=False)

    def loss(self, codes: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
        sample_ids = sample_ids.to(self.idx.device)
        seen = self.seen.clone()
        seen[sample_ids] = True
        idx = self.idx[sample_ids]  # [b, k]
        # Neighbours inside the batch use the live (differentiable) code; the others the bank's.
        position = torch.full((self.bank.shape[0],), -1, dtype=torch.long, device=idx.device)
        position[sample_ids] = torch.arange(sample_ids.shape[0], device=idx.device)
        live = position[idx]  # [b, k], -1 outside the batch
        neighbour_codes = torch.where(
            (live >= 0)[..., None], codes[live.clamp_min(0)], self.bank[idx].to(codes.dtype)
        )
        usable = seen[idx].all(dim=1)
        with torch.no_grad():
            self.bank[sample_ids] = codes.detach().to(self.bank.dtype)
            self.seen[sample_ids] = True
        return cmle_loss(codes[usable], neighbour_codes[usable], self.weights[sample_ids][usable])
