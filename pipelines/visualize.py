"""Pictures: heatmap overlays, thresholded masks, ROC/PR/PRO curves and galleries (matplotlib, Agg).

``eval.visualize`` (on by default) adds :class:`EvaluationPictures` to every test run. Per target and
category it writes to ``RUN/plots/{target}/{category}/``:

- ``curves.png``: ROC, PR and PRO curves (image and pixel level), from the exact curves of
  :mod:`lightning_modules.metrics.curves` (the ones the metrics in results.json integrate);
- ``roc.csv`` (``level,fpr,tpr``: the ROC polyline), ``pr.csv`` (``level,threshold,recall,precision,f1``)
  and ``pro.csv`` (``fpr,pro``: the PRO polyline); a curve with more than :data:`~lightning_modules.metrics.curves.CURVE_POINTS` points
  is thinned to that many, evenly along its length (first, last and F1-optimal points always kept);
- ``gallery.png``: the most and least anomalous test images (image | ground truth | map | map thresholded
  at the category's F1-optimal pixel threshold), ``eval.gallery_size`` of them.

Only the gallery's images are kept during the test loop (a bounded heap per category and end), never all
maps. Under DDP each process keeps its own heaps; rank 0 merges them and draws.
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import io
import itertools
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.atomic_io import atomic_write, atomic_write_text
from datamodules.errors import ConfigError
from datamodules.images import load_image_rgb
from lightning_modules.metrics.curves import CurveSet, RankingCurve, thin_indices
from lightning_modules.metrics.evaluation_result import as_percent

TILE = 160  # gallery tile size in pixels
GAP = 4
OVERLAY_ALPHA = 0.5
MASK_COLOUR = np.array([255, 40, 40], dtype=np.float32)


# --- single images ---------------------------------------------------------------------------------
def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W, 3) uint8 at ``size`` = (height, width), bilinear (only for display)."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def heatmap_rgb(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The map in the jet colour map, ``vmin``..``vmax`` spanning it (uint8 RGB)."""
    span = max(float(vmax) - float(vmin), 1e-12)
    from matplotlib import colormaps

    normalised = np.clip((np.asarray(anomaly_map, dtype=np.float32) - vmin) / span, 0.0, 1.0)
    return (colormaps["jet"](normalised)[..., :3] * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Heatmap blended over the image (both at the map's size)."""
    heat = heatmap_rgb(anomaly_map, vmin, vmax).astype(np.float32)
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * heat
    return blended.round().astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` (bool) painted red over a dimmed image."""
    out = image.astype(np.float32) * 0.6
    out[mask] = 0.4 * out[mask] + 0.6 * MASK_COLOUR
    return out.round().astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    """An RGB or grayscale uint8 array as PNG (replaced atomically)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def _figure(width: float, height: float, dpi: int) -> Any:
    """A matplotlib figure outside pyplot (no global state, no GUI: the Agg canvas renders it)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def _save_figure(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, FigureCanvasAgg(figure).print_png)


# --- curves ----------------------------------------------------------------------------------------
def table_csv(header: tuple[str, ...], rows: Any) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


def write_curve_files(curves: CurveSet, out_dir: Path) -> None:
    """``roc.csv``, ``pr.csv`` and ``pro.csv`` of one category (levels whose curve is undefined are absent)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_rows, pr_rows = [], []
    for level, curve in (("image", curves.image), ("pixel", curves.pixel)):
        if curve is None:
            continue
        for i in thin_indices(curve.roc_fpr, curve.roc_tpr):
            roc_rows.append((level, repr(float(curve.roc_fpr[i])), repr(float(curve.roc_tpr[i]))))
        for i in thin_indices(curve.tpr, curve.precision, keep=curve.best_index):
            pr_rows.append(
                (
                    level,
                    *(repr(float(a[i])) for a in (curve.thresholds, curve.tpr, curve.precision, curve.f1)),
                )
            )
    atomic_write_text(out_dir / "roc.csv", table_csv(("level", "fpr", "tpr"), roc_rows))
    atomic_write_text(
        out_dir / "pr.csv", table_csv(("level", "threshold", "recall", "precision", "f1"), pr_rows)
    )
    pro_rows = []
    if curves.pro is not None:
        pro_rows = [
            (repr(float(curves.pro_fpr[i])), repr(float(curves.pro[i])))
            for i in thin_indices(curves.pro_fpr, curves.pro)
        ]
    atomic_write_text(out_dir / "pro.csv", table_csv(("fpr", "pro"), pro_rows))


def plot_curves(curves: CurveSet, metrics: dict[str, Any], fpr_limit: float, title: str, path: Path) -> None:
    """ROC | PR | PRO of one category in one PNG; legends carry the exact metrics of results.json."""
    figure = _figure(12, 4, 72)
    roc_ax, pr_ax, pro_ax = figure.subplots(1, 3)
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.83, wspace=0.22)
    styles = {"image": "tab:blue", "pixel": "tab:orange"}

    def value(name: str) -> str:
        return as_percent(metrics.get(name))

    curve: RankingCurve | None
    for level, curve in (("image", curves.image), ("pixel", curves.pixel)):
        if curve is None:
            continue
        i = thin_indices(curve.roc_fpr, curve.roc_tpr)
        roc_ax.plot(
            curve.roc_fpr[i],
            curve.roc_tpr[i],
            color=styles[level],
            label=f"{level} AUROC {value(f'{level}_auroc')}",
        )
        j = thin_indices(curve.tpr, curve.precision, keep=curve.best_index)
        pr_ax.step(
            curve.tpr[j],
            curve.precision[j],
            where="post",
            color=styles[level],
            label=f"{level} AP {value(f'{level}_ap')}",
        )
        pr_ax.plot(
            curve.tpr[curve.best_index],
            curve.precision[curve.best_index],
            "o",
            color=styles[level],
            label=f"{level} F1-max {100 * curve.f1_max:.1f} at {curve.f1_threshold:.4g}",
        )
    roc_ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=0.8)
    if curves.pro is not None:
        k = thin_indices(curves.pro_fpr, curves.pro)
        pro_ax.plot(
            curves.pro_fpr[k],
            curves.pro[k],
            color=styles["pixel"],
            label=f"AUPRO@{fpr_limit:g} {value('aupro')} (cflow {value('aupro_cflow')})",
        )
        pro_ax.axvline(fpr_limit, color="gray", linestyle="--", linewidth=0.8)
    for ax, (xlabel, ylabel, name) in zip(
        (roc_ax, pr_ax, pro_ax),
        (
            ("false positive rate", "true positive rate", "ROC"),
            ("recall", "precision", "precision-recall"),
            ("false positive rate (anomaly-free pixels)", "per-region overlap", "PRO"),
        ),
        strict=True,
    ):
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is not pr_ax else "lower left", fontsize=8)
        else:
            reasons = {"ROC": curves.reasons.get("image"), "PRO": curves.reasons.get("pro")}
            ax.text(
                0.5,
                0.5,
                f"undefined:\n{reasons.get(name) or 'no curve'}",
                ha="center",
                va="center",
                fontsize=9,
                wrap=True,
            )
    figure.suptitle(title, y=0.985)
    _save_figure(figure, path)


# --- gallery ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class GalleryItem:
    score: float
    sample_id: int
    image_path: str
    label: int
    anomaly_map: np.ndarray | None  # float32 at the evaluation size (exact for the thresholded column)
    mask: np.ndarray | None  # bool at the evaluation size; None: the dataset has no pixel ground truth


class GalleryHeaps:
    """Per category, the ``size - size // 2`` highest and ``size // 2`` lowest scoring samples seen so far
    (O(size) maps per category, whatever the test set's size)."""

    def __init__(self, size: int) -> None:
        self.n_top, self.n_bottom = size - size // 2, size // 2
        self.top: dict[int, list] = {}
        self.bottom: dict[int, list] = {}
        self._tie = itertools.count()

    def _push(self, heap: list, capacity: int, key: float, item_of) -> None:
        if capacity == 0:
            return
        if len(heap) < capacity:
            heapq.heappush(heap, (key, next(self._tie), item_of()))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, next(self._tie), item_of()))

    def add(self, category: int, score: float, item_of) -> None:
        """``item_of()`` builds the :class:`GalleryItem` only when the sample enters a heap."""
        self._push(self.top.setdefault(category, []), self.n_top, score, item_of)
        self._push(self.bottom.setdefault(category, []), self.n_bottom, -score, item_of)

    def items(self) -> dict[int, list[GalleryItem]]:
        return {
            c: [entry[2] for entry in self.top.get(c, []) + self.bottom.get(c, [])]
            for c in set(self.top) | set(self.bottom)
        }


def select_gallery(items: list[GalleryItem], size: int) -> list[GalleryItem]:
    """The most and least anomalous distinct samples (by sample id), highest score first."""
    unique = sorted({i.sample_id: i for i in items}.values(), key=lambda i: (-i.score, i.sample_id))
    if len(unique) <= size:
        return unique
    n_top = size - size // 2
    return unique[:n_top] + (unique[len(unique) - size // 2 :] if size // 2 else [])


@dataclasses.dataclass
class GalleryRow:
    """One gallery image as arrays (for the PNG and for W&B)."""

    item: GalleryItem
    image: np.ndarray  # uint8 RGB at the map's size
    heatmap: np.ndarray | None  # uint8 RGB overlay
    predicted: np.ndarray | None  # bool, map >= pixel threshold


def gallery_rows(items: list[GalleryItem], pixel_threshold: float | None) -> list[GalleryRow]:
    maps = [i.anomaly_map for i in items if i.anomaly_map is not None]
    vmin = min((float(m.min()) for m in maps), default=0.0)
    vmax = max((float(m.max()) for m in maps), default=1.0)
    rows = []
    for item in items:
        image = load_image_rgb(item.image_path)
        if item.anomaly_map is None:
            rows.append(GalleryRow(item, image, None, None))
            continue
        image = resize_rgb(image, item.anomaly_map.shape)
        anomaly_map = item.anomaly_map.astype(np.float32)
        predicted = None if pixel_threshold is None else anomaly_map >= pixel_threshold
        rows.append(GalleryRow(item, image, overlay(image, anomaly_map, vmin, vmax), predicted))
    return rows


def plot_gallery(rows: list[GalleryRow], pixel_threshold: float | None, title: str, path: Path) -> None:
    """image | ground truth | map | thresholded map, one row per image (highest score first): a mosaic of
    tiles with captions (Pillow; a matplotlib grid of axes costs seconds per category)."""
    from PIL import Image, ImageDraw, ImageFont

    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=10)
    left, top, step = 190, 44, TILE + GAP
    canvas = Image.new("RGB", (left + 4 * step, top + len(rows) * step), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, GAP), title, fill="black", font=font)
    threshold_header = "no pixel threshold" if pixel_threshold is None else f"map >= {pixel_threshold:.4g}"
    for c, text in enumerate(("image", "ground truth", "anomaly map", threshold_header)):
        draw.text((left + c * step + TILE // 2, top - 4), text, fill="black", font=font, anchor="md")
    for r, row in enumerate(rows):
        item = row.item
        cells = [
            row.image,
            mask_overlay(row.image, item.mask) if item.mask is not None else None,
            row.heatmap,
            mask_overlay(row.image, row.predicted) if row.predicted is not None else None,
        ]
        y = top + r * step
        for c, cell in enumerate(cells):
            x = left + c * step
            if cell is None:
                draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), fill=(235, 235, 235))
                draw.text((x + TILE // 2, y + TILE // 2), "n/a", fill="gray", font=font, anchor="mm")
            else:
                canvas.paste(Image.fromarray(resize_rgb(cell, (TILE, TILE))), (x, y))
        image_path = Path(item.image_path)
        folder = "/".join(image_path.parent.parts[-3:])
        caption = [
            f"score {item.score:.4g}",
            "anomalous" if item.label else "normal",
            folder,
            image_path.name,
        ]
        draw.multiline_text((GAP, y + 8), "\n".join(caption), fill="black", font=small, spacing=3)
    save_png(np.asarray(canvas), path)


# --- the callback ----------------------------------------------------------------------------------
class EvaluationPictures(Callback):
    """Curves and gallery of one target's evaluation (rank 0 draws; see the module docstring)."""

    def __init__(
        self,
        out_dir: Path,
        target: str,
        loggers: list,
        gallery_size: int,
        fpr_limit: float,
        run_label: str | None = None,
    ) -> None:
        """``run_label`` (e.g. method and run folder) heads the pictures' titles, so that they say whose they are."""
        if gallery_size < 0:
            raise ConfigError(f"eval.gallery_size must be >= 0 (0: curves only), got {gallery_size}")
        self.out_dir, self.target, self.loggers = Path(out_dir), target, loggers
        self.title = f"{run_label}: {target}" if run_label else target
        self.gallery_size, self.fpr_limit = gallery_size, fpr_limit
        self.heaps = GalleryHeaps(gallery_size)
        self.merged: dict[int, list[GalleryItem]] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, module: Any) -> None:
        self.heaps = GalleryHeaps(self.gallery_size)

    def on_test_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, *index: int
    ) -> None:
        if not isinstance(outputs, dict) or self.gallery_size == 0:
            return
        scores = outputs["image_scores"].detach().float().cpu().tolist()
        maps = outputs.get("anomaly_maps")
        has_mask = batch["has_mask"].tolist()
        for i, score in enumerate(scores):

            def item_of(i: int = i, score: float = score) -> GalleryItem:
                return GalleryItem(
                    score=score,
                    sample_id=int(batch["sample_id"][i]),
                    image_path=str(batch["image_path"][i]),
                    label=int(batch["label"][i]),
                    anomaly_map=None
                    if maps is None
                    else maps[i].detach().float().cpu().numpy().copy(),  # not a view of the batch
                    mask=batch["mask"][i].cpu().numpy() > 0.5 if has_mask[i] else None,
                )

            self.heaps.add(int(batch["category_id"][i]), score, item_of)

    def on_test_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        items = self.heaps.items()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, items)
            merged: dict[int, list[GalleryItem]] = {}
            for part in gathered:
                for category, values in part.items():
                    merged.setdefault(category, []).extend(values)
            items = merged
        self.merged = items

    def on_test_end(self, trainer: L.Trainer, module: Any) -> None:
        if not trainer.is_global_zero or module.test_curves is None:
            return
        categories = list(trainer.datamodule.categories)
        results = module.test_results.per_category
        pictures: dict[str, Path] = {}
        table: list[tuple[str, GalleryRow]] = []
        for category_id, category in enumerate(categories):
            curves = module.test_curves[category]
            folder = self.out_dir / category
            write_curve_files(curves, folder)
            plot_curves(
                curves,
                results[category],
                self.fpr_limit,
                f"{self.title} / {category}",
                folder / "curves.png",
            )
            pictures[f"{category}/curves"] = folder / "curves.png"
            items = select_gallery(self.merged.get(category_id, []), self.gallery_size)
            if not items:
                continue
            threshold = None if curves.pixel is None else curves.pixel.f1_threshold
            rows = gallery_rows(items, threshold)
            plot_gallery(
                rows,
                threshold,
                f"{self.title} / {category}: most and least anomalous",
                folder / "gallery.png",
            )
            pictures[f"{category}/gallery"] = folder / "gallery.png"
            table.extend((category, row) for row in rows)
        from pipelines.loggers import log_pictures

        log_pictures(self.loggers, self.target, pictures, table)
