"""Helpers shared by the raw-layout parsers.

Raw benchmark folders are inconsistent in case (``Train``/``train``, ``NORMAL``/``Normal``), mix
extensions and carry stray folders. The helpers here find folders case-insensitively, pair images with
masks by file stem (never by sort order) and collect what is wrong so that ``zsad data check`` can list
every problem at once instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

from datamodules.errors import DatasetLayoutError
from datamodules.index import NORMAL_DEFECT, DatasetIndex, SampleRecord, list_image_files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_LISTED = 5  # problems spelled out in an error message; `zsad data check` prints all of them


class DatasetLayoutProblems(DatasetLayoutError):
    """Several things are wrong with one root; the message names the first, ``problems`` holds all."""

    def __init__(self, dataset: str, root: Path, problems: Sequence[str]) -> None:
        self.dataset = dataset
        self.root = root
        self.problems = list(problems)
        more = len(self.problems) - 1
        hint = (
            f" (and {more} more; `zsad data check {dataset} --root {root}` lists them all)"
            if more > 0
            else ""
        )
        super().__init__(f"{dataset}: {self.problems[0]}{hint}")


class Findings:
    """What a parser noticed: fatal errors (raised together), problems and warnings (kept on the index)."""

    def __init__(self, dataset: str, root: Path) -> None:
        self.dataset = dataset
        self.root = root
        self.errors: list[str] = []
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def raise_errors(self) -> None:
        if self.errors:
            raise DatasetLayoutProblems(self.dataset, self.root, self.errors)

    def finish(self, index: DatasetIndex) -> DatasetIndex:
        """Raise the fatal errors, else attach problems and warnings to ``index``."""
        self.raise_errors()
        index.problems.extend(self.problems)
        index.warnings.extend(self.warnings)
        return index


def subdirs(parent: Path) -> list[Path]:
    """Visible sub-folders, sorted (hidden ones such as caches or ``.DS_Store`` folders are skipped)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def child_dir(parent: Path, *names: str) -> Path | None:
    """The sub-folder called one of ``names``, exact spelling first, then case-insensitively."""
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    wanted = {n.casefold() for n in names}
    for p in subdirs(parent):
        if p.name.casefold() in wanted:
            return p
    return None


def require_dir(parent: Path, *names: str, dataset: str, hint: str = "") -> Path:
    """Like :func:`child_dir`, but a missing folder is a :class:`DatasetLayoutError` naming it."""
    found = child_dir(parent, *names)
    if found is None:
        present = ", ".join(p.name for p in subdirs(parent)) or "none"
        raise DatasetLayoutError(
            f"{dataset}: expected folder {parent / names[0]} (sub-folders present: {present})"
            + (f"; {hint}" if hint else "")
        )
    return found


def warn_unexpected(findings: Findings, parent: Path, expected: Iterable[str], why: str = "") -> None:
    """Warn about each visible sub-folder of ``parent`` that the layout does not know (it is ignored)."""
    known = {e.casefold() for e in expected}
    for p in subdirs(parent):
        if p.name.casefold() not in known:
            findings.warn(
                f"ignored folder {p}"
                + (f": {why}" if why else f" (not part of the {findings.dataset} layout)")
            )


def pair_by_stem(
    image_dir: Path | Sequence[Path],
    mask_dir: Path | None,
    findings: Findings,
    mask_suffix: str = "",
    require_masks: bool = True,
) -> list[tuple[Path, Path | None]]:
    """Images of ``image_dir`` (one folder or several sharing one mask folder) with their masks
    ``{stem}{mask_suffix}.<any ext>`` from ``mask_dir``.

    An image without a mask is an error when ``require_masks``; a mask without an image, two masks for
    one image or two images with one stem is a problem (the copy is incomplete or mixed, though loading
    still works).
    """
    image_dirs = [image_dir] if isinstance(image_dir, Path) else list(image_dir)
    images = [p for d in image_dirs for p in list_image_files(d, IMAGE_EXTENSIONS)]
    masks: dict[str, list[Path]] = {}
    for mask in list_image_files(mask_dir, IMAGE_EXTENSIONS) if mask_dir is not None else []:
        stem = mask.stem
        if mask_suffix:
            if not stem.endswith(mask_suffix):
                findings.problem(f"file {mask} in the mask folder does not end in '{mask_suffix}'")
                continue
            stem = stem[: -len(mask_suffix)]
        masks.setdefault(stem, []).append(mask)
    pairs: list[tuple[Path, Path | None]] = []
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            findings.problem(f"images {seen[image.stem]} and {image} share a name; both get the same mask")
        seen.setdefault(image.stem, image)
        candidates = masks.get(image.stem, [])
        if len(candidates) > 1:
            listed = ", ".join(str(c) for c in candidates)
            findings.problem(f"several masks for {image}: {listed}; using {candidates[0]}")
        if not candidates and require_masks:
            where = mask_dir / f"{image.stem}{mask_suffix}.png" if mask_dir is not None else "a mask folder"
            findings.error(f"no mask for {image} (expected {where})")
        pairs.append((image, candidates[0] if candidates else None))
    folders = " or ".join(str(d) for d in image_dirs)
    for stem, paths in masks.items():
        if stem not in seen:
            for path in paths:
                findings.problem(f"mask {path} has no image named {stem} in {folders}")
    return pairs


def pair_region_folders(image_dir: Path, gt_dir: Path, findings: Findings) -> list[tuple[Path, Path | None]]:
    """Images of ``image_dir`` with their masks as folders ``gt_dir/{stem}/`` of region PNGs (MVTec LOCO,
    AutoVI): a missing or empty folder is an error naming it, a folder without an image a problem."""
    images = list_image_files(image_dir, IMAGE_EXTENSIONS)
    pairs: list[tuple[Path, Path | None]] = []
    for image in images:
        mask = gt_dir / image.stem
        if not mask.is_dir() or not any(mask.glob("*.png")):
            findings.error(f"no mask for {image} (expected a folder of region PNGs {mask}/)")
        pairs.append((image, mask))
    stems = {p.stem for p in images}
    for folder in subdirs(gt_dir):
        if folder.name not in stems:
            findings.problem(f"mask folder {folder} has no image {image_dir / folder.name}.png")
    return pairs


def make_records(
    items: Iterable[tuple[Path, Path | None]],
    category: str,
    prompt_name: str,
    label: int,
    defect_type: str,
    split: str = "test",
) -> list[SampleRecord]:
    """Records of one (category, label, split) from ``(image, mask or None)`` pairs."""
    return [
        SampleRecord(
            category=category,
            prompt_name=prompt_name,
            image_path=image,
            mask_path=mask,
            label=label,
            defect_type=NORMAL_DEFECT if label == 0 else defect_type,
            split=split,
        )
        for image, mask in items
    ]


def folder_records(
    folder: Path, category: str, prompt_name: str, label: int, defect_type: str, split: str = "test"
) -> list[SampleRecord]:
    """Image-level datasets (no masks): every image of ``folder`` gets ``label``."""
    images = list_image_files(folder, IMAGE_EXTENSIONS)
    return make_records(((p, None) for p in images), category, prompt_name, label, defect_type, split)


@dataclasses.dataclass(frozen=True)
class PairedSplit:
    """One split of an ``images/`` + ``masks/`` style dataset; each name tuple lists accepted spellings."""

    split: str
    image_dirs: tuple[str, ...]
    mask_dirs: tuple[str, ...]
    required: bool = True
    hint: str = ""  # what to do when a required folder is missing


def parse_paired_folders(
    root: Path,
    dataset: str,
    category: str,
    prompt_name: str,
    defect_type: str,
    splits: Sequence[PairedSplit],
    mask_suffix: str = "",
    version: str = "official",
) -> DatasetIndex:
    """Datasets where every image is anomalous and has a mask of the same stem in a sibling folder
    (polyp sets, ISIC, TN3K): no normal images, hence no image-level metrics."""
    findings = Findings(dataset, root)
    warn_unexpected(findings, root, [n for s in splits for n in (*s.image_dirs, *s.mask_dirs)])
    records: list[SampleRecord] = []
    for s in splits:
        if s.required:
            image_dir = require_dir(root, *s.image_dirs, dataset=dataset, hint=s.hint)
            mask_dir = require_dir(root, *s.mask_dirs, dataset=dataset, hint=s.hint)
        else:
            image_dir, mask_dir = child_dir(root, *s.image_dirs), child_dir(root, *s.mask_dirs)
            if image_dir is None:
                continue
        pairs = pair_by_stem(image_dir, mask_dir, findings, mask_suffix=mask_suffix)
        records += make_records(pairs, category, prompt_name, 1, defect_type, s.split)
    return findings.finish(
        DatasetIndex(dataset=dataset, root=root, records=records, has_masks=True, version=version)
    )
