"""AnoVL (Deng et al., arXiv 2308.15939) as a plain torch model on a frozen CLIP.

- Vision: the V-V dual path on every block; maps from the last block's V-V tokens ``ln_post(.) @ proj``,
  class embedding from the original stream (``ln_post`` and ``proj``, as open_clip).
- Text: domain-aware state prompts (:mod:`~lightning_modules.anovl.prompts`), averaged per state.
- Image score: anomaly softmax of raw cosines (no temperature) averaged over 22 views of the image.
- Map: per-patch anomaly softmax, 3x3 average pooling (replicate padding), bilinear upsampling with
  ``align_corners=True`` (the authors' ``F.interpolate`` call).
- TTA (optional, :mod:`~lightning_modules.anovl.tta`): an adapter on the patch tokens, per image.

Nothing here trains; the module is evaluated as it is built (``MethodSpec.trains=False``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError
from lightning_modules.anovl.config import AnoVLConfig
from lightning_modules.anovl.prompts import anovl_ensemble
from lightning_modules.clip import DualPathVisionEncoder, create_clip
from lightning_modules.clip.frozen import FrozenCLIP
from lightning_modules.ops import gaussian_blur, l2_normalize

if TYPE_CHECKING:
    from lightning_modules.anovl.tta import SyntheticAnomalies, TestTimeAdaptation

NORMAL, ABNORMAL = 0, 1
REFERENCE_STREAMS = ("original", "vv")


@dataclasses.dataclass
class CategoryText:
    """Text side of one category."""

    classes: torch.Tensor  # [2, D] (normal, abnormal): L2-normalised mean of the raw sentence embeddings
    prompts: (
        torch.Tensor
    )  # [2K, D] every sentence embedding, L2-normalised, normal first (the adapter's span)


@dataclasses.dataclass
class BatchText:
    classes: torch.Tensor  # [B, 2, D]
    prompts: torch.Tensor  # [B, 2K, D]

    @classmethod
    def stack(cls, texts: Sequence[CategoryText]) -> BatchText:
        return cls(torch.stack([t.classes for t in texts]), torch.stack([t.prompts for t in texts]))


@dataclasses.dataclass
class AnoVLFeatures:
    class_embedding: torch.Tensor  # [B, D] L2-normalised
    patch_tokens: (
        torch.Tensor
    )  # [B, N, D] projected map-layer V-V tokens, *not* normalised (the adapter's input)
    grid: tuple[int, int]
    reference_tokens: dict[
        int, torch.Tensor
    ]  # layer -> [B, N, width] L2-normalised tokens for patch matching


@dataclasses.dataclass
class TextBranchOutput:
    image_scores: torch.Tensor  # [B] text probability of "abnormal" (multi-view mean)
    grid: torch.Tensor  # [B, h, w] pooled patch anomaly probabilities
    features: AnoVLFeatures


def class_probabilities(
    tokens: torch.Tensor, classes: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log softmax_c(cos(f, t_c) / T)``: ``tokens [B, ..., D]``, ``classes [B, 2, D]`` -> ``[B, ..., 2]``."""
    b, d = tokens.shape[0], tokens.shape[-1]
    flat = l2_normalize(tokens.reshape(b, -1, d))
    logits = torch.einsum("bnd,bkd->bnk", flat, classes.to(flat.dtype)) / temperature
    return logits.log_softmax(dim=-1).reshape(*tokens.shape[:-1], classes.shape[1])


def pool_replicate(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``size x size`` average pooling of ``[B, h, w]`` with replicate padding (shape kept)."""
    if size <= 1:
        return maps
    pad = size // 2
    padded = F.pad(maps[:, None], (pad, pad, pad, pad), mode="replicate")
    return F.avg_pool2d(padded, size, stride=1)[:, 0]


def _affine(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(matrix.expand(images.shape[0], 2, 3), list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, padding_mode="reflection", align_corners=True)


def anovl_views(images: torch.Tensor) -> torch.Tensor:
    """The authors' 22 views ``[22 * B, 3, H, W]`` (view-major): the image, 8 small rotations and 8
    translations (reflection padding), horizontal flip, greyscale, and 3 rotations by 90 degrees."""
    views = [images]
    for angle in (-4, -3, -2, -1, 1, 2, 3, 4):
        theta = torch.tensor(angle * math.pi / 16)
        matrix = torch.tensor([[theta.cos(), -theta.sin(), 0.0], [theta.sin(), theta.cos(), 0.0]])
        views.append(_affine(images, matrix.to(images)))
    for a, b in (
        (0.2, 0.2),
        (-0.2, 0.2),
        (-0.2, -0.2),
        (0.2, -0.2),
        (0.1, 0.1),
        (-0.1, 0.1),
        (-0.1, -0.1),
        (0.1, -0.1),
    ):
        views.append(_affine(images, torch.tensor([[1.0, 0.0, a], [0.0, 1.0, b]]).to(images)))
    views.append(images.flip(-1))
    grey = 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]
    views.append(grey.expand_as(images))
    views.extend(torch.rot90(images, k, dims=(-2, -1)) for k in (1, 2, 3))
    return torch.cat(views)


class AnoVL(FrozenCLIP):
    def __init__(self, cfg: AnoVLConfig, clip_model: nn.Module | None = None, tokenizer=None) -> None:
        if clip_model is None:
            clip_model, tokenizer = create_clip(
                cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.cache_dir
            )
        depth = len(clip_model.visual.transformer.resblocks)
        super().__init__(
            cfg.backbone, clip_model, tokenizer, dpam_blocks=range(cfg.dpam_start_block, depth + 1)
        )
        self.cfg = cfg
        # The class token is the original stream, which the dual path leaves unchanged: the 22 views of the
        # image score skip the V-V attention.
        self.plain_vision = DualPathVisionEncoder(
            clip_model.visual,
            image_size=cfg.backbone.image_size,
            pos_embed_interpolation=cfg.backbone.pos_embed_interpolation,
        )
        if not 1 <= cfg.map_layer <= depth or not 1 <= cfg.dpam_start_block <= cfg.map_layer:
            raise ConfigError(
                f"method.map_layer must lie in 1..{depth} and dpam_start_block in 1..map_layer (the map is read from the "
                f"V-V stream), got map_layer={cfg.map_layer}, dpam_start_block={cfg.dpam_start_block}"
            )

    @property
    def patch_size(self) -> int:
        return self.vision.visual.conv1.kernel_size[0]

    # --- text --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_sentences(self, sentences: Sequence[str]) -> torch.Tensor:
        """Raw CLIP text features ``[n, D]``. Each chunk is cut after its longest sentence: the causal mask
        makes the padding irrelevant to the end-of-text feature, and short sequences are much cheaper."""
        device = self.text.token_embedding.weight.device
        out = []
        for start in range(0, len(sentences), self.cfg.text_batch_size):
            ids = self.tokenizer(list(sentences[start : start + self.cfg.text_batch_size])).to(device)
            ids = ids[:, : int(ids.argmax(dim=-1).max()) + 1]
            out.append(self.text.encode(ids).float())
        return torch.cat(out)

    @torch.no_grad()
    def category_text(self, object_name: str, kind: str) -> CategoryText:
        normal, abnormal = anovl_ensemble(kind, self.cfg.templates_per_domain).sentences(object_name)
        classes, prompts = [], []
        for sentences in (normal, abnormal):
            raw = self.encode_sentences(sentences)
            classes.append(l2_normalize(raw.mean(dim=0)))  # the authors average the raw features
            prompts.append(l2_normalize(raw))
        return CategoryText(torch.stack(classes), torch.cat(prompts))

    # --- vision ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, reference_layers: Sequence[int] = (), reference_stream: str = "original"
    ) -> AnoVLFeatures:
        if reference_stream not in REFERENCE_STREAMS:
            raise ValueError(f"reference stream must be one of {REFERENCE_STREAMS}, got {reference_stream!r}")
        vv_layers = [self.cfg.map_layer, *(reference_layers if reference_stream == "vv" else ())]
        original_layers = reference_layers if reference_stream == "original" else ()
        features = self.vision(images, layers=vv_layers, original_layers=original_layers)
        class_embedding = self.image_embedding(features.class_token)
        patch_tokens = self.vision.project(features.tokens[self.cfg.map_layer][:, 1:]).float()
        source = features.original_tokens if reference_stream == "original" else features.tokens
        reference = {layer: l2_normalize(source[layer][:, 1:].float()) for layer in reference_layers}
        return AnoVLFeatures(class_embedding, patch_tokens, features.grid, reference)

    @torch.no_grad()
    def image_scores(
        self, images: torch.Tensor, classes: torch.Tensor, features: AnoVLFeatures | None = None
    ) -> torch.Tensor:
        """``p_abnormal`` of the class embedding, averaged over the 22 views when ``multi_view``."""
        if self.cfg.multi_view:
            embedding = self.image_embedding(self.plain_vision(anovl_views(images)).class_token)
            embedding = embedding.view(-1, *classes.shape[::2])  # [views, B, D]
        else:
            embedding = (features if features is not None else self.encode(images)).class_embedding[None]
        logits = (
            torch.einsum("vbd,bkd->vbk", embedding, classes.to(embedding.dtype)) / self.cfg.image_temperature
        )
        return logits.softmax(dim=-1)[..., ABNORMAL].mean(dim=0)

    def anomaly_grid(
        self, tokens: torch.Tensor, classes: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Pooled patch anomaly probabilities ``[B, h, w]``."""
        probs = class_probabilities(tokens, classes, self.cfg.pixel_temperature)[..., ABNORMAL].exp()
        return pool_replicate(probs.reshape(-1, *grid), self.cfg.pool_size)

    def upsample(self, grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        maps = F.interpolate(grid_maps[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
        return gaussian_blur(maps, self.cfg.gaussian_sigma)

    # --- inference ---------------------------------------------------------------------------------
    def synthetic_anomalies(self, images: torch.Tensor, seeds: Sequence[int]) -> SyntheticAnomalies | None:
        """Extra TTA targets; AnoVL has only feature noise (the dual-image method adds image-space ones)."""
        return None

    def text_branch(
        self,
        images: torch.Tensor,
        text: BatchText,
        tta: TestTimeAdaptation | None = None,
        seeds: Sequence[int] = (),
        categories: Sequence[str] = (),
    ) -> TextBranchOutput:
        """Image scores and the (TTA-adapted) pooled text map on the token grid."""
        features = self.encode(images)
        scores = self.image_scores(images, text.classes, features)
        tokens = features.patch_tokens
        if tta is not None:
            tokens = tta.adapt(tokens, text, seeds, categories, self.synthetic_anomalies(images, seeds))
        return TextBranchOutput(scores, self.anomaly_grid(tokens, text.classes, features.grid), features)

    def predict(
        self,
        images: torch.Tensor,
        text: BatchText,
        size: tuple[int, int],
        tta: TestTimeAdaptation | None = None,
        seeds: Sequence[int] = (),
        categories: Sequence[str] = (),
        **extras: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image scores [B], anomaly maps [B, H, W])``, one per image; ``extras`` go to :meth:`scores_and_maps`."""
        return self.scores_and_maps(self.text_branch(images, text, tta, seeds, categories), size, **extras)

    def scores_and_maps(
        self, out: TextBranchOutput, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AnoVL's outputs: the text probability and the upsampled text map."""
        return out.image_scores, self.upsample(out.grid, size)
