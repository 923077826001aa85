"""anomalib's foreground masking of AnomalyDINO (``AnomalyDINOModel.compute_background_masks``): which patches
of an image are object, from the first principal component of its patch features."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from sklearn.decomposition import PCA

THRESHOLD = 10.0  # on the first principal component's score
CENTRE_BORDER = 0.2  # the centre (without this share of each border) ...
CENTRE_SHARE = 0.35  # ... must be more than this share foreground, else the component's sign is flipped
KERNEL = 3  # dilation and closing, in patches


MORPHOLOGIES = ("grid", "raster")  # AnomalyDINOConfig.mask_morphology


def foreground_masks(
    features: torch.Tensor, grid: tuple[int, int], random_state: int = 0, morphology: str = "grid"
) -> torch.Tensor:
    """``[B, N]`` bool: per image of ``[B, N, D]`` patch features, the patches whose first principal component
    exceeds :data:`THRESHOLD` (sign chosen so that the image's centre is mostly foreground), dilated and
    closed with a 3 x 3 kernel. ``random_state`` seeds sklearn's randomized SVD (anomalib and the authors
    draw from numpy's global generator: the same component to float precision, reproducibly here).
    ``morphology``: "grid" (anomalib: on the patch grid) or "raster" (the authors' ``compute_background_mask``
    dilates and closes the ``[N, 1]`` column of the mask: each patch's neighbours are the previous and the
    next patch in row-major order, across row ends)."""
    if morphology not in MORPHOLOGIES:
        raise ValueError(f"mask morphology must be one of {MORPHOLOGIES}, got {morphology!r}")
    h, w = grid
    y0, y1, x0, x1 = (
        int(h * CENTRE_BORDER),
        int(h * (1 - CENTRE_BORDER)),
        int(w * CENTRE_BORDER),
        int(w * (1 - CENTRE_BORDER)),
    )
    masks = []
    for image in features.detach().cpu().float().numpy():
        component = PCA(n_components=1, svd_solver="randomized", random_state=random_state).fit_transform(
            image
        )
        mask = (component > THRESHOLD).reshape(grid)
        centre = mask[y0:y1, x0:x1]
        if centre.sum() <= centre.size * CENTRE_SHARE:
            mask = (-component > THRESHOLD).reshape(grid)
        masks.append(dilate_close(mask, morphology).reshape(-1))
    return torch.from_numpy(np.stack(masks)).to(features.device)


def dilate_close(mask: np.ndarray, morphology: str = "grid") -> np.ndarray:
    """``[h, w]`` bool mask dilated, then closed, with a 3 x 3 kernel (cv2) on the patch grid ("grid") or on
    its row-major ``[h * w, 1]`` column ("raster", the authors'); same shape back."""
    kernel = np.ones((KERNEL, KERNEL), np.uint8)
    work = mask.reshape(-1, 1) if morphology == "raster" else mask
    work = cv2.dilate(work.astype(np.uint8), kernel)
    return cv2.morphologyEx(work, cv2.MORPH_CLOSE, kernel).astype(bool).reshape(mask.shape)
