"""WinCLIP's window embeddings: each window of patch tokens runs through the ViT on its own.

A window's sequence is the class token and the window's patch tokens, each with its own (full-image)
position embedding. The reference runs one forward pass per window; here all windows of all images of
a batch form one batch of short sequences, run in chunks to bound memory.
"""

from __future__ import annotations

import torch

from datamodules.errors import ConfigError
from lightning_modules.clip.vision import DualPathVisionEncoder


def window_token_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """``[W, size*size]`` row-major patch indices (0-based, into the ``grid``) of every window.

    Windows are ``size x size`` patches moved by ``stride`` patches, row by row (as ``unfold``).
    """
    rows, cols = grid
    if size < 1 or stride < 1:
        raise ConfigError(f"window size and stride must be positive, got {size} and {stride}")
    if size > rows or size > cols:
        raise ConfigError(f"a {size}x{size} window does not fit the {rows}x{cols} patch grid")
    board = torch.arange(rows * cols).view(rows, cols)
    windows = board.unfold(0, size, stride).unfold(1, size, stride)  # [R, C, size, size]
    return windows.reshape(-1, size * size)


def encode_windows(
    vision: DualPathVisionEncoder, images: torch.Tensor, windows: torch.Tensor, chunk_size: int = 4096
) -> torch.Tensor:
    """Class-token outputs ``[B, W, width]`` (before ``ln_post``) of each window run alone.

    ``ln_pre`` acts on each token separately, so selecting tokens after :meth:`embed` equals selecting
    them before it, as the reference does.
    """
    tokens = vision.embed(images)  # [B, 1 + N, width]
    b, _, width = tokens.shape
    n_windows, k = windows.shape
    patches = tokens[:, 1:][:, windows.to(tokens.device)]  # [B, W, k, width]
    cls = tokens[:, :1].unsqueeze(1).expand(b, n_windows, 1, width)
    sequences = torch.cat([cls, patches], dim=2).reshape(b * n_windows, 1 + k, width)
    outputs = [vision.transform_tokens(part)[:, 0] for part in sequences.split(chunk_size)]
    return torch.cat(outputs).reshape(b, n_windows, width)


def harmonic_window_aggregation(
    window_scores: torch.Tensor, windows: torch.Tensor, num_patches: int
) -> torch.Tensor:
    """Per-patch harmonic mean ``[B, N]`` of the scores ``[B, W]`` of the windows covering each patch.

    A window scoring 0 (WinCLIP+'s visual distance to an identical reference window) makes its patches 0,
    as the reference's ``n / sum(1 / s)``; a patch covered by no window gets NaN (cannot happen with
    stride 1 when the window fits the grid).
    """
    index = windows.to(window_scores.device)
    inverse = (1.0 / window_scores).repeat_interleave(index.shape[1], dim=1)  # [B, W * k], window-major
    sums = window_scores.new_zeros(window_scores.shape[0], num_patches).index_add_(
        1, index.flatten(), inverse
    )
    counts = torch.bincount(index.flatten(), minlength=num_patches).to(window_scores.dtype)
    return counts / sums
