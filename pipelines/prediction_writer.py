"""What ``zsad predict`` writes (:mod:`pipelines.predict`): per image its map (at the image's resolution),
thresholded mask, overlay and panel, from the process that predicted it; then ``predictions.csv``,
``unreadable.csv``, ``prediction.json`` and last ``checksums.sha256`` (the SHA-256 of every map, mask and
table, in ``sha256sum`` format: ``sha256sum -c checksums.sha256`` in the folder checks them) from rank 0,
every file written atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.atomic_io import atomic_write
from datamodules.image_folder import ImageList
from datamodules.images import load_image_rgb
from pipelines import submission
from pipelines.map_writer import save_atomically, write_checksums, write_text_file
from pipelines.predict_pictures import MapStatistics, panel_title, run_warnings, threshold_mask
from pipelines.predict_thresholds import Thresholds, gather_objects

if TYPE_CHECKING:
    from pipelines.predict import PredictOptions

PREDICTIONS_FILE = "predictions.csv"
UNREADABLE_FILE = "unreadable.csv"


def _write_tiff(path: Path, array: np.ndarray, dtype: type = np.float32) -> str:
    """``array`` as a TIFF of ``dtype``, written atomically; returns the SHA-256 of the bytes written."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # tifffile wants a named file or a buffer, not a bare descriptor
    tifffile.imwrite(buffer, array.astype(dtype))
    data = buffer.getvalue()
    atomic_write(path, lambda handle: handle.write(data))
    return hashlib.sha256(data).hexdigest()


def _png_digest(array: np.ndarray, path: Path) -> str:
    """:func:`~pipelines.visualize.save_png`, returning the SHA-256 of the file it wrote."""
    from pipelines.visualize import save_png

    save_png(array, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class _Written:
    """What the picture pass needs of one predicted image (its map is read back from its file)."""

    path: str
    name: str
    score: float
    label: int | None


class PredictionWriter(Callback):
    """Writes each readable image's map and mask from the process that predicted it; once every image is
    predicted, the run's colour range is known (all processes' map ranges) and each process draws its
    images' overlays and panels; then rank 0 gathers every process's rows into ``predictions.csv`` and
    ``unreadable.csv`` and writes ``prediction.json``."""

    def __init__(
        self,
        out: Path,
        images: ImageList,
        thresholds: Thresholds,
        options: PredictOptions,
        record: dict[str, Any],
    ) -> None:
        self.out, self.root, self.thresholds, self.options, self.record = (
            out,
            images.root,
            thresholds,
            options,
            record,
        )
        self.rows: dict[str, tuple[float, int | None]] = {}
        self.unreadable: dict[str, str] = {}
        self.known_unreadable = {str(path): error for path, error in images.unreadable}  # bad headers
        self.written: list[_Written] = []
        self.checksums: dict[str, str] = {}  # map and mask files below ``out`` -> SHA-256 (this process's)
        self.stats = MapStatistics()  # this process's

    def name(self, image: Path) -> str:
        if self.options.submission is not None:
            return submission.name_of(image)
        return image.relative_to(self.root).with_suffix("").as_posix()

    def on_predict_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, *index: int
    ) -> None:
        scores = outputs["image_scores"].detach().float().cpu().tolist()
        maps = outputs.get("anomaly_maps")
        for i, path_text in enumerate(batch["image_path"]):
            if batch["error"][i]:
                self.unreadable[path_text] = batch["error"][i]
                print(f"zsad: skipped unreadable image: {batch['error'][i]}", file=sys.stderr)
                continue
            image_threshold = self.thresholds.image
            label = None if image_threshold is None else int(scores[i] >= image_threshold)
            self.rows[path_text] = (scores[i], label)
            self.stats.n_images += 1
            self.stats.n_anomalous += int(bool(label))
            if maps is None:
                continue
            height, width = (int(v) for v in batch["original_size"][i])
            full = torch.nn.functional.interpolate(
                maps[i][None, None].float(), size=(height, width), mode="bilinear", align_corners=False
            )
            anomaly_map = full[0, 0].cpu().numpy()
            name = self.name(Path(path_text))
            if self.options.submission is not None:  # MVTec AD 2's server: float16 in anomaly_images/
                relative = f"{submission.MAPS_DIR}/{name}.tiff"
                server_map = submission.as_map(anomaly_map)
                self.checksums[relative] = _write_tiff(self.out / relative, server_map, np.float16)
            elif self.options.map_format in ("tiff", "both"):
                self.checksums[f"maps/{name}.tiff"] = _write_tiff(
                    self.out / "maps" / f"{name}.tiff", anomaly_map
                )
            if self.options.map_format in ("npy", "both"):
                self.checksums[f"maps/{name}.npy"] = save_atomically(
                    self.out / "maps" / f"{name}.npy", anomaly_map
                )
            self.written.append(_Written(path_text, name, scores[i], label))
            self.stats.add_map(anomaly_map, self.options.overlay_range, self.thresholds.pixel)
            if self.thresholds.pixel is not None:
                mask = threshold_mask(anomaly_map, self.thresholds.pixel)
                path = self._mask_path(name)
                self.checksums[path.relative_to(self.out).as_posix()] = _png_digest(
                    mask.astype(np.uint8) * 255, path
                )

    def _mask_path(self, name: str) -> Path:
        masks = "masks" if self.options.submission is None else submission.MASKS_DIR
        return self.out / masks / f"{name}.png"

    def _read_back(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The map and mask this process wrote for ``name`` (pictures are drawn from the files, not from
        maps held in memory; with --submission the server's float16 map)."""
        import tifffile
        from PIL import Image

        if self.options.submission is not None:
            anomaly_map = tifffile.imread(self.out / submission.MAPS_DIR / f"{name}.tiff").astype(np.float32)
        elif self.options.map_format == "npy":
            anomaly_map = np.load(self.out / "maps" / f"{name}.npy")
        else:
            anomaly_map = tifffile.imread(self.out / "maps" / f"{name}.tiff")
        if self.thresholds.pixel is None:
            return anomaly_map, None
        with Image.open(self._mask_path(name)) as mask:
            return anomaly_map, np.asarray(mask) > 127

    def on_predict_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        from pipelines.predict_pictures import ColourRange, draw_pictures

        stats = MapStatistics.total(gather_objects(self.stats))
        colours = None
        if self.options.overlay_range is not None:
            colours = ColourRange.given(*self.options.overlay_range)
        elif stats.n_maps:
            colours = ColourRange.of_maps(stats.low, stats.high, stats.n_maps)
        for item in self.written:
            anomaly_map, mask = self._read_back(item.name)
            title = panel_title(item.name, item.score, item.label, self.thresholds, mask, colours)
            draw_pictures(
                load_image_rgb(item.path),
                anomaly_map,
                colours,
                mask,
                self.thresholds.pixel,
                title,
                self.out,
                item.name,
            )
        # also: every process has drawn its pictures
        gathered = gather_objects((self.rows, self.unreadable, self.checksums))
        rows = {k: v for part in gathered for k, v in part[0].items()}
        unreadable = {**self.known_unreadable, **{k: v for part in gathered for k, v in part[1].items()}}
        checksums = {k: v for part in gathered for k, v in part[2].items()}
        if not trainer.is_global_zero:
            return
        from pipelines.visualize import table_csv

        warnings = run_warnings(stats, self.thresholds, colours)
        for warning in warnings:
            print(f"zsad: warning: {warning}", file=sys.stderr)
        lines = [
            (path, repr(score), "" if label is None else label)
            for path, (score, label) in sorted(rows.items())
        ]
        if unreadable:
            checksums[UNREADABLE_FILE] = write_text_file(
                self.out / UNREADABLE_FILE, table_csv(("path", "error"), sorted(unreadable.items()))
            )
        checksums[PREDICTIONS_FILE] = write_text_file(
            self.out / PREDICTIONS_FILE, table_csv(("path", "score", "label"), lines)
        )
        record = {
            **self.record,
            "overlay_range": None if colours is None else dataclasses.asdict(colours),
            "map_range": {"min": stats.low, "max": stats.high} if stats.n_maps else None,
            "warnings": [*self.thresholds.warnings, *warnings],
            "n_predicted": len(rows),
            "n_unreadable": len(unreadable),
        }
        checksums["prediction.json"] = write_text_file(
            self.out / "prediction.json", json.dumps(record, indent=2) + "\n"
        )
        write_checksums(self.out, checksums)  # last: a folder with it is complete
