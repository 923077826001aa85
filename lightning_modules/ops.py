"""Small tensor operations shared by the methods' scoring code."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_class_probabilities(
    patch_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    grid: tuple[int, int],
    size: tuple[int, int],
    temperature: float = 0.07,
) -> torch.Tensor:
    """Per-pixel class probabilities ``[B, C, H, W]``.

    ``patch_embeddings`` ``[B, N, D]`` and ``text_embeddings`` ``[C, D]`` must be L2-normalised; the patch
    softmax over classes is reshaped to the token grid and bilinearly upsampled (align_corners=False, as the
    authors' ``get_similarity_map``).
    """
    logits = patch_embeddings @ text_embeddings.t() / temperature
    return upsample_patch_probabilities(logits.softmax(dim=-1), grid, size)


def upsample_patch_probabilities(
    probs: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Patch class probabilities ``[B, N, C]`` as maps ``[B, C, H, W]``: reshaped to the token grid and
    bilinearly upsampled (align_corners=False, the authors' ``get_similarity_map``)."""
    b, _, c = probs.shape
    probs = probs.transpose(1, 2).reshape(b, c, *grid)
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)


def _symmetric_indices(length: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy's ``mode='reflect'`` padding (edge sample repeated), valid for any ``pad``."""
    idx = torch.arange(-pad, length + pad, device=device)
    period = 2 * length
    idx = torch.remainder(idx, period)
    return torch.where(idx >= length, period - 1 - idx, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Batched Gaussian filter of ``[B, H, W]`` maps, equal to ``scipy.ndimage.gaussian_filter(m, sigma)``
    per image (same kernel radius ``int(truncate * sigma + 0.5)`` and reflect boundary)."""
    if sigma <= 0:
        return maps
    radius = int(truncate * float(sigma) + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    b, h, w = maps.shape
    out = maps.reshape(b, 1, h, w)
    rows = _symmetric_indices(h, radius, maps.device)
    cols = _symmetric_indices(w, radius, maps.device)
    out = F.conv2d(out[:, :, rows, :], kernel.view(1, 1, -1, 1))
    out = F.conv2d(out[:, :, :, cols], kernel.view(1, 1, 1, -1))
    return out.reshape(b, h, w)


def kornia_gaussian_blur(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """``kornia.filters.gaussian_blur2d(maps[:, None], (k, k), (sigma, sigma))[:, 0]`` (kornia 0.6.9, the
    defaults: separable, ``'reflect'`` border = torch's, edge sample not repeated) for ``[B, H, W]`` maps:
    the same float32 kernel and the same two padded convolutions, rows first. Unlike scipy's filter
    (:func:`gaussian_blur`) the kernel size is given, not derived from sigma."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"the blur kernel size must be an odd positive integer, got {kernel_size}")
    x = torch.arange(kernel_size, device=maps.device) - kernel_size // 2
    kernel = torch.exp(-(x**2.0) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    pad = kernel_size // 2
    out = maps[:, None]
    out = F.conv2d(F.pad(out, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(
        torch.finfo(x.dtype).tiny if x.is_floating_point() else 1e-12
    )


def normalized_as_stored(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised in float32 and stored in ``x``'s dtype, as the authors' in-place ``x /= x.norm(...)``
    under CUDA autocast (VAND, AdaCLIP: the norm of a float16 tensor is taken in float32); a no-op cast in
    float32."""
    return l2_normalize(x.float()).to(x.dtype)


def class_logits(embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosines ``[B, ..., C]`` of L2-normalised ``[B, ..., D]`` embeddings with ``[C, D]`` texts shared by
    the batch or ``[B, C, D]`` texts of each image's own category."""
    if text_embeddings.dim() == 2:
        return embeddings @ text_embeddings.t()
    flat = embeddings.reshape(embeddings.shape[0], -1, embeddings.shape[-1])
    logits = torch.bmm(flat, text_embeddings.transpose(1, 2))
    return logits.reshape(*embeddings.shape[:-1], text_embeddings.shape[1])


def anomaly_probability(
    embeddings: torch.Tensor, text_embeddings: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``softmax(cos / temperature)`` of the anomalous class (text index 1): ``[B, ...]``."""
    return (class_logits(embeddings, text_embeddings) / temperature).softmax(dim=-1)[..., 1]


def class_probability_maps(
    patch_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    grid: tuple[int, int],
    size: tuple[int, int],
    temperature: float,
    upsample_logits: bool = False,
    align_corners: bool = False,
) -> torch.Tensor:
    """Per-pixel class probabilities ``[B, C, H, W]`` with per-image (``[B, C, D]``) or shared texts.

    ``upsample_logits=False``: softmax on the token grid, then bilinear upsampling (AnomalyCLIP's and
    CLIP's maps, like :func:`patch_class_probabilities`); ``True``: upsample the logits, then softmax
    per pixel (VAND's code, with ``align_corners=True``).
    """
    logits = class_logits(patch_embeddings, text_embeddings) / temperature
    b, _, c = logits.shape
    maps = logits.transpose(1, 2).reshape(b, c, *grid)
    if upsample_logits:
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners).softmax(dim=1)
    return F.interpolate(maps.softmax(dim=1), size=size, mode="bilinear", align_corners=align_corners)


def anomalib_gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """anomalib's ``GaussianBlur2d`` of ``[B, H, W]`` maps (PatchCore's and AnomalyDINO's smoothing): kornia's
    kernel of size ``2 * int(4 * sigma + 0.5) + 1`` (:func:`kornia_gaussian_blur`); ``sigma <= 0`` leaves the
    maps as they are. anomalib convolves once with the 2-D outer product; its two 1-D factors give the same
    maps to float rounding, several times faster."""
    if sigma <= 0:
        return maps
    return kornia_gaussian_blur(maps, 2 * int(4.0 * sigma + 0.5) + 1, sigma)
