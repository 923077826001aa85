"""AnomalyDINO (Damm et al., WACV 2025) as anomalib implements it, in plain torch: training-free few-shot
detection by nearest-neighbour patch matching in DINOv2's feature space.

- memory of a category: the last block's normalised patch tokens of its K normal reference images, each
  L2-normalised (:meth:`AnomalyDINO.set_references`); with masking, only their foreground patches
  (masking.py), and a test image's background patches score 0;
- patch distance: ``1 - cos`` to the nearest reference patch (clamped to [0, 2]; the mean over
  ``num_neighbours`` nearest);
- image score: mean of the top 1 % of the image's patch distances;
- map: the patch distances upsampled (nearest) to the input size and smoothed by anomalib's Gaussian blur
  (sigma 4), padded back where the input was cropped to the patch grid; or, as the authors' ``dists2map``
  (``map_resize: bilinear``, ``gaussian: scipy``), the patch grid resized bilinear to the mask size and
  smoothed there by scipy's Gaussian filter.

Without references (``protocol.shots=0``), the authors' batched zero-shot: each image scored against the
category's other test images (batched.py; the module's transductive pass feeds it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ZsadError
from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.anomalydino.masking import MORPHOLOGIES, foreground_masks
from lightning_modules.dino.encoder import DinoEncoder, pad_back
from lightning_modules.ops import anomalib_gaussian_blur, gaussian_blur

MAP_RESIZES = ("anomalib", "bilinear")  # AnomalyDINOConfig.map_resize
GAUSSIANS = {"anomalib": anomalib_gaussian_blur, "scipy": gaussian_blur}  # AnomalyDINOConfig.gaussian
PREPROCESSINGS = ("anomalib", "authors")  # AnomalyDINOConfig.preprocessing
REFERENCE_CHUNK = 16  # references (with rotations: K * 8 images) are encoded this many at a time


class AnomalyDINO(nn.Module):
    def __init__(self, cfg: AnomalyDINOConfig, encoder: DinoEncoder | None = None) -> None:
        super().__init__()
        if cfg.num_neighbours < 1:
            raise ZsadError(f"num_neighbours must be >= 1, got {cfg.num_neighbours}")
        if not 0.0 < cfg.top_fraction <= 1.0:
            raise ZsadError(f"top_fraction must be in (0, 1], got {cfg.top_fraction}")
        if not 0.0 < cfg.batched_quantile <= 1.0:
            raise ZsadError(f"batched_quantile must be in (0, 1], got {cfg.batched_quantile}")
        for name, allowed in (
            ("map_resize", MAP_RESIZES),
            ("gaussian", tuple(GAUSSIANS)),
            ("preprocessing", PREPROCESSINGS),
            ("mask_morphology", MORPHOLOGIES),
        ):
            if getattr(cfg, name) not in allowed:
                raise ZsadError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
        if cfg.preprocessing == "authors" and not cfg.backbone.any_aspect:
            raise ZsadError(
                "preprocessing=authors keeps each image's aspect ratio: set backbone.any_aspect=true"
            )
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else DinoEncoder(cfg.backbone)
        self.memory: dict[int, torch.Tensor] = {}  # category id -> [M, D], rows L2-normalised
        self.masked: set[int] = set()  # category ids whose patches are foreground-masked (cfg.masking)

    def set_masked_categories(self, category_ids: list[int]) -> None:
        """The categories (ids as batches' ``category_id``) whose references and images are masked."""
        self.masked = {int(c) for c in category_ids}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` patch features as the backbone gives them (masking reads these)."""
        return self.encoder(images).float()

    def foreground(
        self, category_ids: torch.Tensor, features: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """``[B, N]`` bool: the patches that count (every patch unless the image's category is masked);
        ``grid``: the images' patch rows and columns."""
        keep = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        rows = [i for i, c in enumerate(category_ids.tolist()) if c in self.masked]
        if rows:
            keep[rows] = foreground_masks(features[rows], grid, morphology=self.cfg.mask_morphology)
        return keep

    @torch.no_grad()
    def set_references(self, category_id: int, images: torch.Tensor | list[torch.Tensor]) -> None:
        """The memory of category ``category_id`` from its K normal reference images ``[K, 3, S, S]`` (with
        rotate_references: every rotation of each), or a list of such stacks, one per size (references
        that keep their files' aspect, each size encoded apart: the memory is a set of patches, so their
        order does not matter); their background patches leave it where the category is masked and
        ``mask_references`` is set."""
        kept = []
        for stack in [images] if isinstance(images, torch.Tensor) else images:
            features = torch.cat([self.encode(chunk) for chunk in stack.split(REFERENCE_CHUNK)])
            if self.cfg.mask_references:
                grid = self.encoder.grid_of(tuple(stack.shape[-2:]))
                keep = self.foreground(torch.full((len(stack),), int(category_id)), features, grid)
            else:  # the authors' default: references are not masked
                keep = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
            kept.append(features[keep])
        memory = torch.cat(kept)
        if not len(memory):
            raise ZsadError(
                f"masking left no foreground patch in the references of category id {category_id}: leave it "
                "out of method.masked_categories"
            )
        self.memory[int(category_id)] = F.normalize(memory, p=2, dim=-1)

    def clear_references(self) -> None:
        self.memory = {}

    def patch_distances(self, category_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``[B, N]``: each patch's mean ``1 - cos`` to its ``num_neighbours`` nearest reference patches of
        its image's category."""
        out = features.new_empty(features.shape[:2])
        for category in torch.unique(category_ids).tolist():
            if category not in self.memory:
                raise ZsadError(
                    "AnomalyDINO scores images against reference images of their category and has none: "
                    "evaluate it few-shot (protocol.shots=K)"
                )
            rows = (category_ids == category).nonzero().flatten().to(features.device)
            similarity = features[rows] @ self.memory[category].T
            distances = (1 - similarity).clamp(min=0.0, max=2.0)
            k = min(self.cfg.num_neighbours, distances.shape[-1])
            out[rows] = torch.topk(distances, k=k, dim=-1, largest=False).values.mean(dim=-1)
        return out

    def image_scores(self, distances: torch.Tensor) -> torch.Tensor:
        """``[B]``: the mean of each image's largest ``max(int(N * top_fraction), 1)`` patch distances."""
        top = max(int(distances.shape[-1] * self.cfg.top_fraction), 1)
        return torch.topk(distances, top, dim=-1).values.mean(dim=-1)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, category_ids: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], anomaly maps [B, H, W])`` at the mask size ``size``."""
        grid = self.encoder.grid_of(tuple(images.shape[-2:]))
        distances = self.masked_distances(category_ids, self.encode(images), grid)
        return self.image_scores(distances), self.anomaly_maps(distances, images.shape[-2:], size)

    def masked_distances(
        self, category_ids: torch.Tensor, features: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """``[B, N]`` patch distances of raw ``features`` (of a ``grid`` of patches), 0 on masked-out
        background patches."""
        distances = self.patch_distances(category_ids, F.normalize(features, p=2, dim=-1))
        return distances * self.foreground(category_ids, features, grid)

    def anomaly_maps(
        self, distances: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]
    ) -> torch.Tensor:
        """``[B, H, W]`` maps of ``[B, N]`` patch distances: upsampled (nearest, as anomalib) to the cropped
        input, smoothed, padded back to ``input_size`` and resized (bilinear) to ``size`` if it differs; or
        (``map_resize: bilinear``, the authors') resized bilinear to ``size`` and smoothed there."""
        blur = GAUSSIANS[self.cfg.gaussian]
        grid = distances.view(-1, 1, *self.encoder.grid_of(tuple(input_size)))
        if self.cfg.map_resize == "bilinear":  # cv2.resize INTER_LINEAR = half-pixel centres, edges clamped
            # in float64 as theirs (float64 distances): float32 rounding would break ties of the smoothed
            # background differently and move pixel AUROC by up to 1e-3 on the masked parity run
            maps = F.interpolate(grid.double(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
            return blur(maps, self.cfg.gaussian_sigma).to(distances.dtype)
        left, right, top, bottom = pads = self.encoder.crop_pads(input_size)
        cropped = (input_size[0] - top - bottom, input_size[1] - left - right)
        maps = F.interpolate(grid, size=cropped)[:, 0]
        maps = pad_back(blur(maps, self.cfg.gaussian_sigma), pads)
        if tuple(maps.shape[-2:]) != tuple(size):  # masks evaluated at another size than the input
            maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return maps
