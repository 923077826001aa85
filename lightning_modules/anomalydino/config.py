"""AnomalyDINO settings (docs/methods.md#anomalydino); defaults are anomalib's ``AnomalyDINO`` (2.7.0), the
parity reference of issue 26; the authors' own code (dammsi/AnomalyDINO, ``run_anomalydino.py``) is the
setting ``configs/method/anomalydino_authors.yaml`` (each of its differences a switch below); their batched
zero-shot script (``run_anomalydino_batched.py``) the setting ``configs/method/anomalydino_batched.yaml`` at
``protocol.shots=0`` (the transductive protocol: each test image scored against the category's other test
images, ``batched_*`` below)."""

from __future__ import annotations

import dataclasses

from lightning_modules.dino.config import DinoBackboneConfig


@dataclasses.dataclass
class AnomalyDINOConfig:
    name: str = "anomalydino"
    # DINOv2 ViT-S/14 (LVD-142M weights) at 252 x 252 px (18 x 18 patches), anomalib's encoder and size
    backbone: DinoBackboneConfig = dataclasses.field(default_factory=DinoBackboneConfig)
    num_neighbours: int = 1  # patch distance: mean over this many nearest reference patches (1 - cos)
    top_fraction: float = 0.01  # image score: mean of the largest max(int(N * 0.01), 1) patch distances
    # Map smoothing: anomalib's GaussianBlur2d (sigma 4, kernel 33, reflect padding) after a nearest
    # upsampling of the patch distances to the input size; 0: none.
    gaussian_sigma: float = 4.0
    # anomalib's foreground masking (its `masking`, off by default): per image, patches whose first principal
    # component is > 10 (sign chosen so that the centre is foreground), dilated and closed (3 x 3); background
    # patches of the references leave the memory, those of a test image score 0. masked_categories: the
    # category folder names it applies to (None: every category); anomalib's example masks capsule, hazelnut,
    # pill, screw and toothbrush of MVTec AD.
    masking: bool = False
    masked_categories: list[str] | None = None
    # Whether masking also drops the references' background patches: true (anomalib) or false (the authors'
    # default ``--mask_ref_images False``: only test images are masked).
    mask_references: bool = True
    # The masks' dilation and closing (3 x 3): "grid" (anomalib: on the patch grid) or "raster" (the authors'
    # compute_background_mask runs them on the [N, 1] column of the mask: the neighbours of a patch are the
    # previous and next patch in row-major order, across row ends).
    mask_morphology: str = "grid"
    # The preprocessing of images and masks: "anomalib" (252 x 252, the float tensor resized bicubic,
    # antialiased) or "authors" (their DINOv2Wrapper: PIL bicubic resize of the short side to
    # backbone.image_size, aspect kept; masks and maps at the image file's own resolution, as their
    # post_eval; needs backbone.any_aspect and backbone.crop=top_left).
    preprocessing: str = "anomalib"
    # Map: "anomalib" (patch distances upsampled nearest to the cropped input, smoothed, padded back, resized
    # bilinear to the mask size) or "bilinear" (the authors' dists2map: the patch grid resized bilinear,
    # cv2's INTER_LINEAR, straight to the mask size, then smoothed there).
    map_resize: str = "anomalib"
    # Map smoothing: "anomalib" (its GaussianBlur2d: kernel 2 * int(4 * sigma + 0.5) + 1, torch 'reflect'
    # padding) or "scipy" (the authors': scipy.ndimage.gaussian_filter(sigma), mode 'reflect' = the edge
    # sample repeated, truncate 4).
    gaussian: str = "anomalib"
    # Rotation augmentation of the references (the authors' augment_image): each reference image, as
    # decoded, rotated about its centre by each of rotation_angles (cv2.warpAffine, bilinear, reflect-101
    # border), every rotation's patches in the memory. rotated_categories: the category folder names it
    # applies to (None: every category: their default --preprocess agnostic; "informed": hazelnut, screw).
    rotate_references: bool = False
    rotated_categories: list[str] | None = None
    rotation_angles: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]
    )
    # Batched zero-shot (protocol.shots=0; their run_anomalydino_batched.py calculate_cosine_distances): each
    # patch's cosine distances to every patch of the category's OTHER test images, the mean of those strictly
    # below the k-th smallest, k = int(batched_quantile * M) of M such patches (their quantile=0.001);
    # the image score is the mean of the int(N * top_fraction) largest (their dists_to_score, no max(., 1)).
    batched_quantile: float = 0.001
    # Where their code fails: k = 0 (M < 1 / quantile: torch.kthvalue raises), a foreground patch with no
    # distance strictly below its k-th (k = 1, or ties: 0 / 0 = NaN, which roc_auc_score refuses) or an image
    # of fewer than 1 / top_fraction patches (the mean of nothing: NaN). false (theirs): zsad refuses these
    # with an error; true (a zsad guard, for small inputs): k >= 1, such a patch scores its k-th distance,
    # and the score is the mean of at least 1 patch.
    batched_guards: bool = False
