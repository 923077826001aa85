"""AdaptCLIP's three adapters as plain torch modules (their adaptcliplib/adaptclip.py: ``VisualAdapter``,
``TextualAdapter``, ``PQAdapter``), with the same layer structure so that their saved state maps entry by
entry (official_checkpoint.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualMLP(nn.Module):
    """``x + Linear(D, D/r, no bias) -> BatchNorm1d -> ReLU -> Linear(D/r, D, no bias)`` over the last
    dimension; a ``[B, L, D]`` input is flattened to ``B * L`` rows, so BatchNorm's batch statistics span
    every token (the class token included), as their ``ResMLP``."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.BatchNorm1d(dim // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(dim // reduction, dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x + self.fc(x)
        rows = x.reshape(-1, x.shape[-1])
        return (rows + self.fc(rows)).view(x.shape)


class VisualAdapter(nn.Module):
    """Residual MLPs on the image embedding (``global_adapter``) and on the last feature layer's tokens
    (``local_adapter``; their attribute is spelt ``local_adater``), scored against the frozen static texts."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.local_adapter = ResidualMLP(dim, reduction)
        self.global_adapter = ResidualMLP(dim, reduction)


def _local_head(dim: int, mid: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, mid, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, mid, kernel_size=2, stride=2, padding=0),
        nn.Conv2d(mid, mid // 2, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(mid // 2),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid // 2, mid // 2, kernel_size=2, stride=2, padding=0),
        nn.Conv2d(mid // 2, 2, kernel_size=1, stride=1, padding=0),
    )


def _global_head(dim: int, mid: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, mid, bias=False),
        nn.BatchNorm1d(mid),
        nn.ReLU(inplace=True),
        nn.Linear(mid, mid // 2, bias=False),
        nn.BatchNorm1d(mid // 2),
        nn.ReLU(inplace=True),
        nn.Linear(mid // 2, 2, bias=False),
    )


class PQAdapter(nn.Module):
    """The prompt-query adapter: per feature layer, each query patch is aligned to its nearest prompt patch
    (``min (1 - cos)``: the alignment map), the fusion ``q + |q - p|`` (``context``; else ``|q - p|``) goes
    through that layer's BatchNorm2d, a conv head (two 2x transposed convolutions, 2 classes, softmax) and,
    pooled as ``(mean + top-10 mean) / 2``, an MLP head (2 logits). With ``share_heads`` (their code) every
    layer uses the same two heads."""

    TOPK = 10

    def __init__(self, dim: int, mid: int, layers: int, context: bool, share_heads: bool) -> None:
        super().__init__()
        self.context = context
        self.share_heads = share_heads
        heads = 1 if share_heads else layers
        self.norms = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(layers))
        self.local_heads = nn.ModuleList(_local_head(dim, mid) for _ in range(heads))
        self.global_heads = nn.ModuleList(_global_head(dim, mid) for _ in range(heads))

    def forward(
        self,
        queries: list[torch.Tensor],
        prompts: list[torch.Tensor],
        grid: tuple[int, int],
        size: tuple[int, int],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per layer ``(image logits [B, 2], class probabilities [B, 2, H, W], alignment maps [B, 1, H, W])``
        of query tokens ``[B, 1 + N, D]`` and prompt tokens ``[B, S, 1 + N, D]`` (class token first, not
        normalised; both dropped here)."""
        logits, probs, aligns = [], [], []
        for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
            head = 0 if self.share_heads else i
            b, dim = query.shape[0], query.shape[-1]
            query = F.normalize(query, dim=-1)[:, 1:]
            prompt = F.normalize(prompt, dim=-1)[:, :, 1:].reshape(b, -1, dim)
            align, nearest = torch.min(1.0 - torch.bmm(query, prompt.permute(0, 2, 1)), dim=-1)
            align = F.interpolate(align.reshape(b, 1, *grid), size=size, mode="bilinear")
            aligns.append(align)
            aligned = prompt[torch.arange(b, device=prompt.device).unsqueeze(1), nearest]
            query_map = query.permute(0, 2, 1).reshape(b, dim, *grid)
            aligned_map = aligned.permute(0, 2, 1).reshape(b, dim, *grid)
            residual = torch.abs(query_map - aligned_map)
            fusion = self.norms[i](query_map + residual if self.context else residual)
            local = self.local_heads[head](fusion).softmax(dim=1)
            probs.append(F.interpolate(local, size=size, mode="bilinear"))
            flat = fusion.view(b, dim, -1)
            pooled = (flat.mean(dim=-1) + flat.topk(self.TOPK, dim=-1)[0].mean(dim=-1)) / 2.0
            logits.append(self.global_heads[head](pooled))
        return logits, probs, aligns
