"""Bayes-PFL's prompt flows (their models/PFL.py, models/flows.py, loss.py): a Gaussian posterior whose draws
go through planar normalizing flows, and the KL term of their prompt flow loss.

Their naming is kept where it explains the numbers: the encoder's second output is called ``var`` but is
``exp(0.5 * h)`` (a standard deviation), and the draw is ``mu + eps * sqrt(var)``; the KL term reads
``log q(z0)`` with ``logvar = log(var)``. zsad does the same so that trained prompts transfer both ways.
"""

from __future__ import annotations

import torch
from torch import nn


class InferenceBlock(nn.Sequential):
    """``Linear -> Softplus -> Linear -> Softplus -> Linear`` (their ``InferenceBlock``)."""

    def __init__(self, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__(
            nn.Linear(inputs, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, outputs),
        )


class GaussianPosterior(nn.Module):
    """Their ``Encoder``: ``(mu, var)`` with ``var = exp(0.5 * logvar_net(x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mean = InferenceBlock(dim, hidden, dim)
        self.log_variance = InferenceBlock(dim, hidden, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(x), torch.exp(0.5 * self.log_variance(x))


def planar_flows(
    z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z_K`` and ``sum_k log|det J_k|`` of K planar flows ``z' = z + u tanh(w.z + b)`` (their ``Planar``).

    ``z [N, S, D]`` (S draws of each of N rows), ``u, w [N, K, D]`` and ``b [N, K]`` (N = 1: shared by all).
    """
    log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for k in range(u.shape[1]):
        uk, wk, bk = u[:, k, None], w[:, k, None], b[:, k, None]
        h = torch.tanh((wk * z).sum(-1, keepdim=True) + bk[..., None])
        psi = wk * (1 - h**2)
        log_det = log_det + torch.log(torch.abs(1 + (psi * uk).sum(-1)) + 1e-5)
        z = z + uk * h
    return z, log_det


def log_normal(x: torch.Tensor, mean: torch.Tensor | float, logvar: torch.Tensor) -> torch.Tensor:
    """Their ``log_normal_dist`` summed over the last dimension (no ``log 2 pi`` term)."""
    return torch.sum(-0.5 * (logvar + (x - mean) * (x - mean) * logvar.exp().reciprocal()), -1)


class ImageSpecificFlow(nn.Module):
    """The image-specific distribution (their ``PlanarPFL`` on the image embedding): posterior and flow
    parameters amortised from the (unnormalised) image embedding."""

    def __init__(self, dim: int, hidden: int, num_flows: int) -> None:
        super().__init__()
        self.num_flows = num_flows
        self.posterior = GaussianPosterior(dim, hidden)
        self.amor_u = nn.Linear(dim, num_flows * dim)
        self.amor_w = nn.Linear(dim, num_flows * dim)
        self.amor_b = nn.Linear(dim, num_flows)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [B, D]``, standard normal ``eps [B, S, D]`` -> ``(z_K [B, S, D], KL term or None)``.

        The KL term (their ``binary_loss_function``, summed over the batch and divided by its size) is
        returned for one draw per image (training)."""
        n, d = x.shape
        mu, var = self.posterior(x)
        std = var.sqrt()
        z0 = mu[:, None] + eps * std[:, None]
        u = self.amor_u(x).view(n, self.num_flows, d)
        w = self.amor_w(x).view(n, self.num_flows, d)
        b = self.amor_b(x).view(n, self.num_flows)
        zk, log_det = planar_flows(z0, u, w, b)
        if eps.shape[1] != 1:
            return zk, None
        log_q = log_normal(z0[:, 0], mu, var.log()) + 1e-8
        log_p = log_normal(zk[:, 0], 0.0, torch.zeros_like(zk[:, 0])) + 1e-8
        return zk, (torch.sum(log_q - log_p) - torch.sum(log_det)) / n


class ImageAgnosticFlow(nn.Module):
    """The image-agnostic distribution of one class (their ``PlanarPFL_state``): a learned input ``state``
    through the (shared) posterior, and learned flow parameters."""

    def __init__(self, posterior: GaussianPosterior, dim: int, num_flows: int) -> None:
        super().__init__()
        self.posterior = [posterior]  # shared with the other class; not registered twice
        self.amor_u = nn.Parameter(torch.randn(1, num_flows, dim, 1))
        self.amor_w = nn.Parameter(torch.randn(1, num_flows, 1, dim))
        self.amor_b = nn.Parameter(torch.randn(1, num_flows, 1, 1))
        self.state = nn.Parameter(torch.randn(1, dim))

    def forward(self, eps: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``eps [S, D]`` -> ``(z_K [S, D], KL term or None)``; ``batch_size`` divides the log-determinant
        as in their loss (which sums it over a batch of one and divides by the image batch size)."""
        mu, var = self.posterior[0](self.state)
        z0 = mu + eps * var.sqrt()
        u, w, b = self.amor_u[..., 0], self.amor_w[:, :, 0], self.amor_b[:, :, 0, 0]
        zk, log_det = planar_flows(z0[None], u, w, b)
        zk, log_det = zk[0], log_det[0]
        if eps.shape[0] != 1:
            return zk, None
        log_q = log_normal(z0, mu, var.log()) + 1e-8
        log_p = log_normal(zk, 0.0, torch.zeros_like(zk)) + 1e-8
        return zk, torch.sum(log_q - log_p) - torch.sum(log_det) / batch_size
