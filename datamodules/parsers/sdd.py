"""SDD: KolektorSDD (Tabernik et al., 2019), electrical commutators with surface cracks.

Two versions are indexed; ``DatasetIndex.version`` records which:

``raw-thirds``
    The official archive (``KolektorSDD.zip``): ``kos01..kos50/PartN.jpg`` with ``PartN_label.bmp``
    (399 images of about 500x1240, 52 with a defect). The zero-shot papers (DRA, AdaCLIP, ...) use the
    DRA conversion, which this parser reproduces: each image is cut along its height into three
    thirds (rows ``[0, H//3)``, ``[H//3, 2H//3)``, ``[2H//3, H)``); a third is anomalous iff its part
    of the label is non-empty; all anomalous thirds go to the test split and a quarter of the normal
    thirds (``ceil(0.25 n)``, chosen as ``sklearn.train_test_split(test_size=0.25, random_state=42)``
    does, i.e. ``RandomState(42).permutation``) join them; the rest is ``train``. This gives the
    commonly reported 286 normal / 54 anomalous test images. DRA's script (AdaCLIP's
    ``data_preprocess/sdd-pre.py``) took the crops in ``os.listdir`` order, which is filesystem-dependent,
    so the published split's choice of normal thirds cannot be recovered from the raw archive: here they
    are taken in sorted order (folder, file, third), a *reconstruction* with the same counts whose 286
    test normals may differ from the published copy's (``zsad data check`` says so). For the published
    split, point the root at the published conversion (``mvtec-like`` below).

    The index holds file paths, so the crops are written once (lossless PNG, the image's own mode)
    in MVTec AD layout -- ``SDD/{train/good,test/good,test/defect,ground_truth/defect}`` with names
    ``{kos}_{PartN}_{third}.png`` as DRA's -- into a cache: ``{root}/.zsad_sdd_thirds/`` when the
    root is writable, else ``$ZSAD_CACHE_DIR/sdd_thirds/<hash of root>/`` or
    ``~/.cache/zsad/sdd_thirds/<hash of root>/``. The cache entry is keyed by the size and mtime of
    every source file, so it is reused while the raw folder is unchanged and rebuilt when it changes;
    it is built in a temporary folder and renamed into place, so concurrent ranks do not clash.

``mvtec-like``
    An already converted copy in MVTec AD layout, e.g. DRA's/AdaCLIP's ``SDD_anomaly_detection``
    (``SDD/test/{good,defect}``, ``SDD/ground_truth/defect/{stem}_mask.png``): indexed as it is. A
    copy with AnomalyCLIP's 181 / 74 test counts is recorded as ``mvtec-like-anomalyclip``.

The single category id is ``sdd`` whatever the folder is called; prompt name "electrical commutators".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.errors import DatasetLayoutError
from datamodules.images import image_size, load_mask, open_image
from datamodules.index import DatasetIndex, DatasetSpec, list_image_files, register_dataset
from datamodules.parsers.common import IMAGE_EXTENSIONS, Findings, subdirs
from datamodules.parsers.mvtec import parse_mvtec_like

SDD_CATEGORY = "sdd"
SDD_PROMPT = "electrical commutators"
CONVERTED_CATEGORY = "SDD"  # folder name of DRA's conversion, reused for the cache
CACHE_DIR_NAME = ".zsad_sdd_thirds"
CACHE_FORMAT = 1  # bump when the conversion changes, so old caches are rebuilt
TEST_FRACTION = 0.25
SPLIT_SEED = 42
THIRDS_TEST_COUNTS = {SDD_CATEGORY: (286, 54)}
ANOMALYCLIP_TEST_COUNTS = {SDD_CATEGORY: (181, 74)}
RECONSTRUCTION_NOTE = (
    "sdd raw-thirds: a reconstruction of DRA's split (normal thirds in sorted order; the published copy took "
    "them in os.listdir order): same counts, possibly other test normals; for the published split point the "
    "root at its SDD_anomaly_detection copy (docs/datasets.md, SDD)"
)
_KOS = re.compile(r"kos\d+", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class _Source:
    folder: str  # kos01
    image: Path
    label: Path

    @property
    def stem(self) -> str:
        return f"{self.folder}_{self.image.stem}"


def thirds(height: int) -> list[tuple[int, int]]:
    """Row ranges of the three crops, exactly as DRA's conversion (``H//3`` and ``H*2//3``)."""
    return [(0, height // 3), (height // 3, height * 2 // 3), (height * 2 // 3, height)]


def split_normals(n: int, fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> set[int]:
    """Indices of the normal crops that go to the test split (sklearn ``train_test_split``'s rule)."""
    n_test = math.ceil(fraction * n)
    return {int(i) for i in np.random.RandomState(seed).permutation(n)[:n_test]}


def _can_write(folder: Path) -> bool:
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def cache_base(root: Path) -> Path:
    """Where the converted thirds of ``root`` live (see the module docstring)."""
    local = root / CACHE_DIR_NAME
    if _can_write(local):
        return local
    env = os.environ.get("ZSAD_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "zsad"
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return base / "sdd_thirds" / key


def _fingerprint(sources: list[_Source]) -> str:
    entries = []
    for s in sources:
        image, label = s.image.stat(), s.label.stat()
        entries.append(
            [
                s.folder,
                s.image.name,
                image.st_size,
                image.st_mtime_ns,
                s.label.name,
                label.st_size,
                label.st_mtime_ns,
            ]
        )
    payload = json.dumps([CACHE_FORMAT, TEST_FRACTION, SPLIT_SEED, entries])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _convert(sources: list[_Source], out: Path, findings: Findings) -> None:
    """Write the thirds of every source in MVTec AD layout under ``out / SDD``."""
    labels: list[list[bool]] = []
    defect_masks: dict[int, np.ndarray] = {}  # only the few defective images, to keep memory small
    for i, s in enumerate(sources):
        mask = load_mask(s.label)
        width, height = image_size(s.image)
        if mask.shape != (height, width):
            findings.error(
                f"label {s.label} is {mask.shape[1]}x{mask.shape[0]} but image {s.image} is {width}x{height}"
            )
        labels.append([bool(mask[a:b].any()) for a, b in thirds(mask.shape[0])])
        if any(labels[-1]):
            defect_masks[i] = mask
    findings.raise_errors()
    normal_crops = [(i, t) for i, flags in enumerate(labels) for t, flag in enumerate(flags) if not flag]
    test_normals = {normal_crops[k] for k in split_normals(len(normal_crops))}

    cat = out / CONVERTED_CATEGORY
    for folder in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (cat / folder).mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(sources):
        image = open_image(s.image)
        for t, (a, b) in enumerate(thirds(image.height)):
            name = f"{s.stem}_{t}"
            crop = image.crop((0, a, image.width, b))
            if labels[i][t]:
                crop.save(cat / "test" / "defect" / f"{name}.png")
                part = defect_masks[i][a:b].astype(np.uint8) * 255
                Image.fromarray(part).save(cat / "ground_truth" / "defect" / f"{name}_mask.png")
            else:
                split = "test" if (i, t) in test_normals else "train"
                crop.save(cat / split / "good" / f"{name}.png")


def materialise_thirds(root: Path, sources: list[_Source], findings: Findings) -> Path:
    """The converted copy of ``sources`` (an MVTec-like root), built once and reused while unchanged."""
    base = cache_base(root)
    digest = _fingerprint(sources)
    target = base / digest
    if (target / "conversion.json").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{digest}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _convert(sources, tmp, findings)
        manifest = {
            "source_root": str(root),
            "format": CACHE_FORMAT,
            "conversion": "KolektorSDD thirds along the height (DRA); normal thirds split 75/25 with seed 42",
            "n_sources": len(sources),
        }
        (tmp / "conversion.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "conversion.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in base.iterdir():  # caches of earlier states of the raw folder
        if old.is_dir() and old != target and re.fullmatch(r"[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    return target


def _as_sdd(index: DatasetIndex, root: Path, version: str) -> DatasetIndex:
    records = [dataclasses.replace(r, category=SDD_CATEGORY, prompt_name=SDD_PROMPT) for r in index.records]
    return dataclasses.replace(index, dataset="sdd", root=root, records=records, version=version)


def _parse_raw(root: Path, kos_dirs: list[Path]) -> DatasetIndex:
    findings = Findings("sdd", root)
    sources: list[_Source] = []
    for folder in kos_dirs:
        files = list_image_files(folder, IMAGE_EXTENSIONS)
        labels = {p.stem[: -len("_label")]: p for p in files if p.stem.endswith("_label")}
        images = [p for p in files if not p.stem.endswith("_label")]
        for image in images:
            label = labels.pop(image.stem, None)
            if label is None:
                findings.error(f"no label for {image} (expected {folder / (image.stem + '_label.bmp')})")
            else:
                sources.append(_Source(folder.name, image, label))
        for stem, label in labels.items():
            findings.problem(f"label {label} has no image {folder / stem}.jpg")
        for p in subdirs(folder):
            findings.warn(f"ignored folder {p} (KolektorSDD's kos folders hold only images and labels)")
    for p in subdirs(root):
        if not _KOS.fullmatch(p.name):
            findings.warn(f"ignored folder {p}: not a KolektorSDD kosNN folder")
    findings.raise_errors()
    if not sources:
        raise DatasetLayoutError(f"sdd: no PartN.jpg images in the kos folders under {root}")
    converted = materialise_thirds(root, sources, findings)
    index = parse_mvtec_like(converted, "sdd", [CONVERTED_CATEGORY], prompt_name=lambda c: SDD_PROMPT)
    index = _as_sdd(index, root, "raw-thirds")
    index.warnings.append(RECONSTRUCTION_NOTE)
    index.warnings.extend(findings.warnings)
    index.problems.extend(findings.problems)
    return index


def parse_sdd(root: Path) -> DatasetIndex:
    kos_dirs = [p for p in subdirs(root) if _KOS.fullmatch(p.name)]
    if kos_dirs:
        return _parse_raw(root, kos_dirs)
    if (root / "test").is_dir():
        raise DatasetLayoutError(
            f"sdd: {root} is a category folder; set the root to its parent {root.parent} (the folder that contains it)"
        )
    categories = [p.name for p in subdirs(root) if (p / "test").is_dir()]
    if not categories:
        raise DatasetLayoutError(
            f"sdd: {root} has neither KolektorSDD's kos01..kos50 folders (raw archive) nor a converted "
            "MVTec-like copy (a folder such as SDD/ with test/good and test/defect inside)"
        )
    if len(categories) > 1:
        raise DatasetLayoutError(
            f"sdd: a converted copy has one category folder, found {categories} under {root}"
        )
    index = parse_mvtec_like(
        root, "sdd", categories, prompt_name=lambda c: SDD_PROMPT, mask_suffixes=("_mask", "")
    )
    counts = index.select(split="test").counts()[categories[0]]
    anomalyclip = (counts["normal"], counts["anomalous"]) == ANOMALYCLIP_TEST_COUNTS[SDD_CATEGORY]
    return _as_sdd(index, root, "mvtec-like-anomalyclip" if anomalyclip else "mvtec-like")


register_dataset(
    DatasetSpec(
        name="sdd",
        parse=parse_sdd,
        categories=(SDD_CATEGORY,),
        has_masks=True,
        has_normals=True,
        domain="industrial",
        expected_test_counts=THIRDS_TEST_COUNTS,
        version_test_counts={
            "raw-thirds": THIRDS_TEST_COUNTS,
            "mvtec-like": THIRDS_TEST_COUNTS,
            "mvtec-like-anomalyclip": ANOMALYCLIP_TEST_COUNTS,
        },
        description="KolektorSDD (Tabernik et al., 2019), commutators; raw kosNN folders cut into thirds, "
        "or a converted MVTec-like copy",
    )
)
