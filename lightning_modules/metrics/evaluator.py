"""Per-category anomaly-detection evaluation as one torchmetrics ``Metric`` (state + update + compute, DDP).

States are flat 1-D tensors (pixel scores of all images back to back, masks as uint8, per-sample metadata),
so images of different sizes and uneven ranks concatenate and gather without padding tricks. Samples carry
their dataset index: duplicates added by ``DistributedSampler`` padding are dropped, and samples are
processed in index order, so N processes give bit-identical results to one. Categories whose samples have
all arrived are scored and their pixels freed during the epoch, under DDP too (:mod:`.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from datamodules.errors import ZsadError
from lightning_modules.metrics.category_results import (
    PixelResults,
    category_pixel_results,
    category_spro,
    image_metrics,
    sample_level_metrics,
)
from lightning_modules.metrics.category_scores import CategoryScoreRule, combined_scores
from lightning_modules.metrics.curves import CURVE_POINTS, CurveSet
from lightning_modules.metrics.early_finish import EarlyFinishing
from lightning_modules.metrics.evaluation_result import (
    METRIC_NAMES,
    SAMPLE_METRICS,
    SPRO_METRICS,
    EvaluationResult,
)
from lightning_modules.metrics.spro import SPRO_FPR_LIMIT, region_scores

#: Storage types of pixel scores: float32 (default, exact for float32 maps) or float16 (half the memory;
#: the metrics are then exact for the maps rounded to float16).
PIXEL_SCORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}

_FLOAT16_MAX = 65504.0


class NonFiniteScoresError(ZsadError, ValueError):
    """A method's image scores or anomaly maps contain NaN: nothing can be ranked."""


class AnomalyEvaluator(EarlyFinishing, Metric):
    """Image AUROC/AP/F1-max, pixel AUROC/AP, exact AUPRO and cflow-style AUPRO per category, plus their
    unweighted category mean.

    ``update`` takes a batch: category ids (indices into ``categories``), each sample's unique index in the
    dataset (to drop the duplicates a ``DistributedSampler`` pads with), image scores, 0/1 labels and,
    optionally, anomaly maps (B,H,W) with masks (B,H,W) and ``has_mask`` (False = the sample has no pixel
    ground truth at all; an all-zero mask of a normal image is ground truth). ``compute`` returns an
    :class:`EvaluationResult`; undefined metrics are None with a reason, never 0.

    Pixel scores are stored as ``pixel_score_dtype``: float32 by default (exact for float32 maps); float16
    halves memory but rounds scores to 11 significant bits (the metrics are then exact for the rounded maps).
    Masks are stored as uint8.

    Memory: given ``samples_per_category`` (the number of test samples of each category), a single process
    computes a category's pixel metrics and curves as soon as all its samples have arrived and frees its
    pixel states, so that at most the categories in progress are held (one at a time for a loader in
    category order). Under DDP the same holds when each process also gets ``expected_samples`` (per
    category, the sample ids its loader gives it, padding duplicates left out;
    :func:`~.distributed.expected_samples` derives them from the loader): every process then finishes the
    categories in ascending order, each as soon as its own samples of it and of the categories before it
    have arrived (at once for a category it has none of), by gathering only that category's states from
    all processes (:func:`~.distributed.gather_category`), which one of them scores (category id modulo the
    number of processes; :meth:`compute` and :meth:`curves` share the results); a process holds its share
    of the category in progress plus, while finishing one, the gathered category. A padding duplicate that arrives after its
    category was finished is not stored; the test step must issue no collective of its own per step (every
    process must finish the same categories in the same order). :attr:`while_waiting`, when set, is called
    while a process waits for the others and may raise to stop (zsad's requeue signal does). Without ``expected_samples`` (a custom or
    shuffled sampler, sizes unknown) DDP falls back to holding every pixel until the end of the epoch, when
    the states are gathered; the numbers are the same. A category's pixel metrics and curves come from one
    split of its pixels (:func:`~.curves.pixel_metrics_and_curves`), computed once, when it finishes or at
    the first :meth:`compute` or :meth:`curves` after the last update. The curves kept for :meth:`curves`
    are thinned to ``curve_points`` points each (``None``: the full curves, which for pixels are larger
    than the pixel states they come from); ``keep_curves=False`` computes and keeps none. torchmetrics options pass through ``kwargs`` (e.g.
    ``compute_on_cpu=True`` keeps the pixel states of a GPU run in host memory).

    Two optional result columns, exact under DDP like the rest (their states are gathered and de-duplicated
    with the others): ``sample_metrics`` adds ``sample_auroc``/``sample_ap``/``sample_f1_max`` over the
    physical samples of a multi-view dataset (``update``'s ``group_ids``: a sample scores the maximum of its
    views' scores and is anomalous when any view is, as Real-IAD's ADEval counts them); ``region_metrics``
    adds ``spro``, MVTec LOCO's AU-sPRO up to ``spro_fpr_limit`` (:mod:`.spro`), from ``update``'s
    ``regions`` (B, R, H, W) and ``region_saturation`` (B, R); a region keeps only its pixels' scores, and
    the anomaly-free pixels are those of the masks, which must be the regions' union.

    ``image_score_rule`` (:mod:`.category_scores`): image scores that depend on the whole category, from
    the parts ``update`` takes, combined at :meth:`compute`; per population of ``populations`` (per
    category id; MVTec LOCO's two rows of an object are one) with an image that several rows hold counted
    once (``image_ids``: per sample id, an id of its image file), when given.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    img_category: list[Tensor]
    img_sample: list[Tensor]
    img_score: list[Tensor]
    img_label: list[Tensor]
    img_pixel_gt: list[Tensor]
    pix_category: list[Tensor]
    pix_sample: list[Tensor]
    pix_height: list[Tensor]
    pix_width: list[Tensor]
    pix_scores: list[Tensor]
    pix_masks: list[Tensor]
    img_group: list[Tensor]
    reg_category: list[Tensor]
    reg_sample: list[Tensor]
    reg_index: list[Tensor]
    reg_saturation: list[Tensor]
    reg_scores: list[Tensor]
    reg_size: list[Tensor]

    _IMAGE_STATES = ("img_category", "img_sample", "img_score", "img_label", "img_pixel_gt", "img_group")
    _PIXEL_STATES = ("pix_category", "pix_sample", "pix_height", "pix_width", "pix_scores", "pix_masks")
    # one row per ground-truth region (sPRO), its pixels' scores back to back
    _REGION_STATES = ("reg_category", "reg_sample", "reg_index", "reg_saturation", "reg_size", "reg_scores")

    def __init__(
        self,
        categories: Sequence[str],
        pixel_metrics: bool = True,
        fpr_limit: float = 0.3,
        pixel_score_dtype: torch.dtype = torch.float32,
        samples_per_category: Sequence[int] | None = None,
        expected_samples: Sequence[Collection[int]] | None = None,
        curve_points: int | None = CURVE_POINTS,
        keep_curves: bool = True,
        sample_metrics: bool = False,
        region_metrics: bool = False,
        spro_fpr_limit: float = SPRO_FPR_LIMIT,
        image_score_rule: CategoryScoreRule | None = None,
        populations: Sequence[int] | None = None,
        image_ids: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if "aupro_method" in kwargs:
            raise ValueError(
                "aupro_method was removed: every result has both the exact 'aupro' and the cflow-style "
                "'aupro_cflow'"
            )
        super().__init__(**kwargs)
        self.categories = [str(c) for c in categories]
        if not self.categories:
            raise ValueError("categories must not be empty")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be unique; got {self.categories}")
        for name, limit in (("fpr_limit", fpr_limit), ("spro_fpr_limit", spro_fpr_limit)):
            if not 0.0 < float(limit) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1]; got {limit}")
        if pixel_score_dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"pixel_score_dtype must be a float dtype; got {pixel_score_dtype}")
        if samples_per_category is not None and len(samples_per_category) != len(self.categories):
            raise ValueError(
                f"samples_per_category has {len(samples_per_category)} entries for {len(self.categories)} categories"
            )
        if expected_samples is not None and (
            samples_per_category is None or len(expected_samples) != len(self.categories)
        ):
            raise ValueError(
                "expected_samples needs samples_per_category and one set of sample ids per category"
            )
        if populations is not None and len(populations) != len(self.categories):
            raise ValueError(
                f"populations has {len(populations)} entries for {len(self.categories)} categories"
            )
        if curve_points is not None and int(curve_points) < 3:
            raise ValueError(
                f"curve_points must be at least 3 (or None for the full curves); got {curve_points}"
            )
        self.pixel_metrics = bool(pixel_metrics)
        self.fpr_limit = float(fpr_limit)
        self.sample_metrics = bool(sample_metrics)
        self.region_metrics = bool(region_metrics)
        self.spro_fpr_limit = float(spro_fpr_limit)
        # Scores that depend on the whole category (category_scores.py): ``update`` then takes the parts.
        self.image_score_rule = image_score_rule
        self._part_states = tuple(
            f"img_part{i}" for i in range(image_score_rule.parts if image_score_rule else 0)
        )
        self._image_state_names = (*self._IMAGE_STATES, *self._part_states)
        # The rule's groups (category_scores.combined_scores): per category id its population (the rows of one
        # object together), per sample id its image file (an image several rows hold counted once).
        self.populations = None if populations is None else [int(p) for p in populations]
        self.image_ids = None if image_ids is None else torch.as_tensor(list(image_ids), dtype=torch.long)
        self.curve_points = None if curve_points is None else int(curve_points)
        self.keep_curves = bool(keep_curves)
        self.pixel_score_dtype = pixel_score_dtype
        self.samples_per_category = (
            None if samples_per_category is None else [int(n) for n in samples_per_category]
        )
        self.expected_samples = (
            None if expected_samples is None else [frozenset(int(i) for i in s) for s in expected_samples]
        )
        # Per category: sample ids seen so far, and the pixel results of categories already finished; the
        # results of the others computed since the last update; under DDP the next category to finish. The
        # most pixel samples stored at once (before freeing any).
        self._seen: dict[int, set[int]] = {}
        self._finished: dict[int, PixelResults] = {}
        self._finished_curves: dict[int, CurveSet] = {}
        self._since_update: dict[int, tuple[PixelResults, CurveSet | None]] = {}
        self._next_in_order = 0
        # Under DDP: categories finished but scored by another process, and how many finished categories
        # every process has the results of (_share_scored).
        self._scored_elsewhere: set[int] = set()
        self._shared_upto = 0
        self.peak_stored_pixel_samples = 0
        self.scored_here = 0  # categories whose pixel metrics and curves this process computed early
        # Called while this process waits for the others to finish a category; may raise to stop.
        self.while_waiting: Callable[[], None] | None = None
        self._state_dtypes = {
            "img_category": torch.int64,
            "img_sample": torch.int64,
            "img_score": torch.float64,
            "img_label": torch.uint8,
            "img_pixel_gt": torch.uint8,  # 0: no map, 1: map but no pixel ground truth, 2: map and mask
            "pix_category": torch.int64,
            "pix_sample": torch.int64,
            "pix_height": torch.int64,
            "pix_width": torch.int64,
            "pix_scores": pixel_score_dtype,
            "pix_masks": torch.uint8,
            "img_group": torch.int64,  # -1: the image is a sample of its own
            "reg_category": torch.int64,
            "reg_sample": torch.int64,
            "reg_index": torch.int64,
            "reg_saturation": torch.float64,
            "reg_size": torch.int64,
            "reg_scores": pixel_score_dtype,
            **dict.fromkeys(self._part_states, torch.float64),
        }
        for name in self._state_dtypes:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @property
    def extra_metrics(self) -> tuple[str, ...]:
        """The result columns beyond :data:`METRIC_NAMES` this evaluator computes."""
        return (SAMPLE_METRICS if self.sample_metrics else ()) + (SPRO_METRICS if self.region_metrics else ())

    @property
    def pixel_score_dtype_name(self) -> str:
        return str(self.pixel_score_dtype).removeprefix("torch.")

    @property
    def stored_pixel_samples(self) -> int:
        """How many samples' pixels this process holds now (padding duplicates included)."""
        return sum(int(chunk.shape[0]) for chunk in self._pixel_chunks("pix_sample"))

    # ----------------------------------------------------------------------------------------------------
    def update(
        self,
        category_ids: Tensor,
        sample_ids: Tensor,
        image_scores: Tensor,
        labels: Tensor,
        anomaly_maps: Tensor | None = None,
        masks: Tensor | None = None,
        has_mask: Tensor | None = None,
        group_ids: Tensor | None = None,
        regions: Tensor | None = None,
        region_saturation: Tensor | None = None,
    ) -> None:
        """Add one batch; pixel data is kept only for samples that have pixel ground truth. With an
        ``image_score_rule``, ``image_scores`` are the ``[B, parts]`` parts of the images' scores."""
        self._since_update = {}
        parts = self._score_parts(image_scores)
        if parts is not None:
            image_scores = parts[:, 0]
        category_ids = torch.as_tensor(category_ids).reshape(-1)
        b = category_ids.shape[0]
        sample_ids = torch.as_tensor(sample_ids).reshape(-1)
        image_scores = torch.as_tensor(image_scores).reshape(-1)
        labels = torch.as_tensor(labels).reshape(-1)
        for name, t in (("sample_ids", sample_ids), ("image_scores", image_scores), ("labels", labels)):
            if t.shape[0] != b:
                raise ValueError(f"{name} has {t.shape[0]} entries but category_ids has {b}")
        if category_ids.is_floating_point() or sample_ids.is_floating_point():
            raise ValueError("category_ids and sample_ids must be integer tensors")
        if b and (int(category_ids.min()) < 0 or int(category_ids.max()) >= len(self.categories)):
            raise ValueError(
                f"category_ids must be in [0, {len(self.categories)}); got {category_ids.tolist()}"
            )
        if bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError("labels must be 0/1")
        if image_scores.is_floating_point() and bool(torch.isnan(image_scores).any()):
            raise self._not_a_number("image scores", torch.isnan(image_scores), category_ids)
        if parts is not None and bool(torch.isnan(parts).any()):
            raise self._not_a_number("image score parts", torch.isnan(parts), category_ids)
        dev = self.device
        groups = torch.full((b,), -1, dtype=torch.int64) if group_ids is None else torch.as_tensor(group_ids)
        if groups.reshape(-1).shape[0] != b:
            raise ValueError(f"group_ids has {groups.reshape(-1).shape[0]} entries but category_ids has {b}")
        pixel_gt = torch.zeros(b, dtype=torch.uint8, device=dev)
        if anomaly_maps is not None and self.pixel_metrics:
            maps = self._as_bhw(anomaly_maps, "anomaly_maps", b)
            if masks is None:
                pixel_gt.fill_(1)
            else:
                gts = self._as_bhw(masks, "masks", b)
                if tuple(gts.shape) != tuple(maps.shape):
                    raise ValueError(f"masks {tuple(gts.shape)} and anomaly_maps {tuple(maps.shape)} differ")
                keep = torch.ones(b, dtype=torch.bool) if has_mask is None else torch.as_tensor(has_mask)
                keep = keep.reshape(-1).to(torch.bool).cpu()
                if keep.shape[0] != b:
                    raise ValueError(f"has_mask has {keep.shape[0]} entries but category_ids has {b}")
                self._check_maps(maps[keep], category_ids[keep.to(category_ids.device)])
                pixel_gt = torch.where(keep, 2, 1).to(dev, torch.uint8)
                cats = category_ids.cpu()
                for ci in torch.unique(cats[keep]).tolist():  # one stored chunk per category
                    if ci in self._finished or ci in self._scored_elsewhere:
                        continue  # duplicates of a finished category's samples (checked below)
                    sel = keep & (cats == ci)
                    self._store_pixels(category_ids[sel], sample_ids[sel], maps[sel], gts[sel])
                    if self.region_metrics and regions is not None:
                        self._store_regions(ci, sample_ids, maps, regions, region_saturation, sel)
        self.img_category.append(category_ids.to(dev, torch.int64))
        self.img_sample.append(sample_ids.to(dev, torch.int64))
        self.img_score.append(image_scores.detach().to(dev, torch.float64))
        self.img_label.append(labels.to(dev, torch.uint8))
        self.img_pixel_gt.append(pixel_gt)
        self.img_group.append(groups.reshape(-1).to(dev, torch.int64))
        for name, part in zip(self._part_states, parts.T if parts is not None else (), strict=True):
            getattr(self, name).append(part.detach().to(dev, torch.float64))
        self.peak_stored_pixel_samples = max(self.peak_stored_pixel_samples, self.stored_pixel_samples)
        self._finish_complete_categories(category_ids, sample_ids)

    def _score_parts(self, image_scores: Tensor) -> Tensor | None:
        """``[B, parts]`` under an image-score rule (checked), else None."""
        if self.image_score_rule is None:
            return None
        parts = torch.as_tensor(image_scores)
        if parts.ndim != 2 or parts.shape[1] != self.image_score_rule.parts:
            raise ValueError(
                f"image score rule '{self.image_score_rule.name}' takes [B, {self.image_score_rule.parts}] "
                f"score parts; got {tuple(parts.shape)}"
            )
        return parts

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Calling the metric only accumulates: a per-batch evaluation would sort every pixel of the batch
        for numbers nobody reads. Call :meth:`compute` at the end of the epoch."""
        self.update(*args, **kwargs)

    def reset(self) -> None:
        super().reset()
        self._seen = {}
        self._finished = {}
        self._finished_curves = {}
        self._since_update = {}
        self._next_in_order = 0
        self._scored_elsewhere = set()
        self._shared_upto = 0
        self.peak_stored_pixel_samples = 0
        self.scored_here = 0

    @staticmethod
    def _as_bhw(x: Tensor, name: str, b: int) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or x.shape[0] != b:
            raise ValueError(f"{name} must be (B,H,W) or (B,1,H,W) with B={b}; got {tuple(x.shape)}")
        return x

    def _not_a_number(self, what: str, nan: Tensor, category_ids: Tensor) -> NonFiniteScoresError:
        """One line: which scores are NaN, how many and where (a diverged training, broken weights)."""
        nan = nan.reshape(nan.shape[0], -1).any(dim=1).cpu()
        categories = sorted({self.categories[int(c)] for c in category_ids.cpu()[nan]})
        return NonFiniteScoresError(
            f"the method's {what} contain NaN for {int(nan.sum())} of {nan.shape[0]} images of this batch "
            f"(category {', '.join(categories)}): its weights or inputs are not finite (a training that "
            "diverged? check the checkpoint), so no metric can be computed"
        )

    def _check_maps(self, maps: Tensor, category_ids: Tensor) -> None:
        if maps.is_floating_point() and bool(torch.isnan(maps).any()):
            raise self._not_a_number("anomaly maps", torch.isnan(maps), category_ids)
        if self.pixel_score_dtype == torch.float16 and bool((maps.abs() > _FLOAT16_MAX).any()):
            raise ValueError(
                "anomaly_maps exceed the float16 range (|x| > 65504); store pixel scores as float32 "
                "(eval.pixel_score_dtype=float32)"
            )

    def _store_pixels(self, cats: Tensor, samples: Tensor, maps: Tensor, gts: Tensor) -> None:
        maps = maps.detach()
        dev = self.device
        n, h, w = maps.shape
        self.pix_category.append(cats.to(dev, torch.int64))
        self.pix_sample.append(samples.to(dev, torch.int64))
        self.pix_height.append(torch.full((n,), h, dtype=torch.int64, device=dev))
        self.pix_width.append(torch.full((n,), w, dtype=torch.int64, device=dev))
        self.pix_scores.append(maps.to(dev, self.pixel_score_dtype).reshape(-1))
        self.pix_masks.append((gts > 0).to(dev, torch.uint8).reshape(-1))

    def _store_regions(
        self, ci: int, samples: Tensor, maps: Tensor, regions: Tensor, saturation: Tensor | None, sel: Tensor
    ) -> None:
        """One row per region with pixels of the selected samples (a category's chunk, like the pixels)."""
        if saturation is None:
            raise ValueError("regions need region_saturation")
        rows, scores = [], []
        for i in torch.nonzero(sel).reshape(-1).tolist():
            for k, values, area in region_scores(maps[i].detach(), regions[i], saturation[i]):
                rows.append((int(samples[i]), k, area, int(values.shape[0])))
                scores.append(values.reshape(-1))
        if not rows:
            return
        dev = self.device
        sample, index, area, size = zip(*rows, strict=True)
        self.reg_category.append(torch.full((len(rows),), ci, dtype=torch.int64, device=dev))
        self.reg_sample.append(torch.tensor(sample, dtype=torch.int64, device=dev))
        self.reg_index.append(torch.tensor(index, dtype=torch.int64, device=dev))
        self.reg_saturation.append(torch.tensor(area, dtype=torch.float64, device=dev))
        self.reg_size.append(torch.tensor(size, dtype=torch.int64, device=dev))
        self.reg_scores.append(torch.cat(scores).to(dev, self.pixel_score_dtype))

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        # torchmetrics fills a rank's empty list state with an empty tensor of the metric's float dtype,
        # which mismatches the other ranks' dtypes in all_gather; give it the state's own dtype instead.
        for name, dtype in self._state_dtypes.items():
            value = getattr(self, name)
            if isinstance(value, list) and not value:
                setattr(self, name, [torch.empty(0, dtype=dtype, device=self.device)])
        kwargs = {} if dist_sync_fn is None else {"dist_sync_fn": dist_sync_fn}
        super()._sync_dist(process_group=process_group, **kwargs)

    # ----------------------------------------------------------------------------------------------------
    def _cat(self, name: str) -> Tensor:
        value = getattr(self, name)
        if isinstance(value, Tensor):
            return value
        if not value:
            return torch.empty(0, dtype=self._state_dtypes[name], device=self.device)
        return torch.cat(value) if len(value) > 1 else value[0]

    def _pixel_chunks(self, name: str) -> list[Tensor]:
        value = getattr(self, name)
        return [value] if isinstance(value, Tensor) else list(value)

    @staticmethod
    def _first_occurrences(category: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """Indices of the first occurrence of each (category, sample) pair, ordered by (category, sample)."""
        if category.size == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.lexsort((np.arange(category.size), sample, category))  # stable: first occurrence first
        cs, ss = category[order], sample[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = (cs[1:] != cs[:-1]) | (ss[1:] != ss[:-1])
        return order[first]

    def _image_states(self) -> tuple[np.ndarray, Tensor, Tensor, np.ndarray, np.ndarray, int]:
        """(category, score, label, pixel-gt status) of the first occurrence of every sample, the indices of
        those, and how many duplicates were dropped."""
        img_cat = self._cat("img_category").cpu().numpy()
        img_sample = self._cat("img_sample").cpu().numpy()
        keep = self._first_occurrences(img_cat, img_sample)
        scores = self._cat("img_score").cpu()
        if self.image_score_rule is not None:  # each category's scores from its samples' parts
            parts = torch.stack([self._cat(name).cpu() for name in self._part_states], dim=1)
            scores = torch.zeros_like(scores)
            images = None if self.image_ids is None else self.image_ids[img_sample[keep]]
            scores[keep] = combined_scores(
                self.image_score_rule, img_cat[keep], parts[keep], self.populations, images
            )
        return (
            img_cat,
            scores,
            self._cat("img_label").cpu(),
            self._cat("img_pixel_gt").cpu().numpy(),
            keep,
            int(img_cat.size - keep.size),
        )

    def _results(self, ci: int) -> tuple[PixelResults, CurveSet | None]:
        """Category ``ci``'s pixel results and curves: kept when it finished, else computed once per update."""
        if ci in self._finished:
            return self._finished[ci], self._finished_curves.get(ci)
        if ci not in self._since_update:
            self._since_update[ci] = self._category_results(ci)
        return self._since_update[ci]

    def _category_results(self, ci: int) -> tuple[PixelResults, CurveSet | None]:
        img_cat, img_score, img_label, img_pixel_gt, keep, _ = self._image_states()
        idx = keep[img_cat[keep] == ci]
        maps, gts = self._category_pixels(ci) if self.pixel_metrics and idx.size else ([], [])
        (values, reasons, notes), curves = category_pixel_results(
            self.categories[ci],
            img_score[idx],
            img_label[idx],
            img_pixel_gt[idx],
            maps,
            gts,
            enabled=self.pixel_metrics,
            fpr_limit=self.fpr_limit,
            keep_curves=self.keep_curves,
            curve_points=self.curve_points,
        )
        if self.region_metrics:
            values["spro"], why = category_spro(maps, gts, self._category_regions(ci), self.spro_fpr_limit)
            if why:
                reasons["spro"] = why
        return (values, reasons, notes), curves

    def _category_regions(self, ci: int) -> list[tuple[np.ndarray, float]]:
        """(scores, saturation) of category ``ci``'s regions, each region of each sample once."""
        rows = self._cat("reg_category").cpu().numpy() == ci
        if not rows.any():
            return []
        sample = self._cat("reg_sample").cpu().numpy()
        first = self._first_occurrences(sample[rows], self._cat("reg_index").cpu().numpy()[rows])
        sizes = self._cat("reg_size").cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[rows]
        scores = self._cat("reg_scores").cpu().float().numpy()
        saturation = self._cat("reg_saturation").cpu().numpy()[rows]
        size = sizes[rows]
        return [(scores[starts[i] : starts[i] + size[i]], float(saturation[i])) for i in first]

    def compute(self) -> EvaluationResult:
        """Metrics per category; undefined ones are None with a reason in ``missing``."""
        self._share_scored()
        img_cat, img_score, img_label, _, keep, duplicates = self._image_states()
        img_group = self._cat("img_group").cpu().numpy() if self.sample_metrics else None
        per_category: dict[str, dict[str, float | None]] = {}
        missing: dict[str, dict[str, str]] = {}
        num_images: dict[str, int] = {}
        notes: list[str] = []
        for ci, name in enumerate(self.categories):
            idx = keep[img_cat[keep] == ci]
            num_images[name] = int(idx.size)
            values: dict[str, float | None] = dict.fromkeys((*METRIC_NAMES, *self.extra_metrics))
            reasons: dict[str, str] = {}
            image_metrics(img_score[idx], img_label[idx], values, reasons)
            if img_group is not None:
                sample_level_metrics(img_score[idx], img_label[idx], img_group[idx], values, reasons)
            (pv, pr, pn), _ = self._results(ci)
            values.update(pv)
            reasons.update(pr)
            notes.extend(pn)
            per_category[name] = values
            missing[name] = reasons
        if duplicates:
            notes.append(f"dropped {duplicates} duplicate samples (distributed sampler padding)")
        return EvaluationResult.from_categories(
            per_category,
            missing,
            num_images=num_images,
            fpr_limit=self.fpr_limit,
            pixel_score_dtype=self.pixel_score_dtype_name,
            duplicates_dropped=duplicates,
            notes=notes,
            extra_metrics=self.extra_metrics,
        )

    def curves(self) -> dict[str, CurveSet]:
        """Each category's ROC, PR and PRO curves and F1-optimal thresholds (:mod:`.curves`) from the same
        synchronised, de-duplicated states as :meth:`compute` (computed with its metrics, so after
        :meth:`compute` with nothing left to compute); under DDP every process must call it."""
        if not self.keep_curves:
            raise ValueError("this evaluator keeps no curves (keep_curves=False)")
        self._share_scored()
        if all(ci in self._finished or ci in self._since_update for ci in range(len(self.categories))):
            return {name: self._results(ci)[1] for ci, name in enumerate(self.categories)}
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return {name: self._results(ci)[1] for ci, name in enumerate(self.categories)}

    def _category_pixels(self, ci: int) -> tuple[list[Tensor], list[Tensor]]:
        """(maps, masks) of category ``ci``: 2-D views of the first occurrence of each of its samples, in
        sample order."""
        pix_cat = self._cat("pix_category").cpu().numpy()
        pix_keep = self._first_occurrences(pix_cat, self._cat("pix_sample").cpu().numpy())
        pidx = pix_keep[pix_cat[pix_keep] == ci]
        if pidx.size == 0:
            return [], []
        heights = self._cat("pix_height").cpu().numpy()
        widths = self._cat("pix_width").cpu().numpy()
        segments = list(self._segments(heights, widths))
        return [segments[i][0] for i in pidx], [segments[i][1] for i in pidx]

    def _segments(self, heights: np.ndarray, widths: np.ndarray) -> Iterator[tuple[Tensor, Tensor]]:
        """(map, mask) 2-D views per stored pixel sample; samples never straddle two stored chunks."""
        score_chunks = self._pixel_chunks("pix_scores")
        mask_chunks = self._pixel_chunks("pix_masks")
        chunk, offset = 0, 0
        for h, w in zip(heights.tolist(), widths.tolist(), strict=True):
            n = h * w
            while chunk < len(score_chunks) and offset >= score_chunks[chunk].shape[0]:
                chunk, offset = chunk + 1, 0
            scores, gts = score_chunks[chunk], mask_chunks[chunk]
            if offset + n > scores.shape[0]:
                raise RuntimeError("pixel states are inconsistent with their per-sample sizes")
            yield scores[offset : offset + n].view(h, w), gts[offset : offset + n].view(h, w)
            offset += n
