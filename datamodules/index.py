"""One index format for every benchmark.

Each dataset parser reads its official raw layout and returns a :class:`DatasetIndex`: a flat list of
:class:`SampleRecord` plus what the dataset can and cannot be evaluated on. Everything downstream (the
torch dataset, the DataModule, evaluation) only sees this index, so adding a benchmark means adding one
parser and one :class:`DatasetSpec`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pipelines.errors import DatasetLayoutError, ZsadError

NORMAL_DEFECT = "good"


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """One image of a benchmark, with its ground truth."""

    category: str  # category id as on disk (e.g. "metal_nut", "01", "Class3")
    prompt_name: str  # object word used in text prompts (e.g. "metal nut", "product")
    image_path: Path
    mask_path: Path | None  # None: no pixel ground truth (normal image or dataset without masks)
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # NORMAL_DEFECT for normal images
    split: str  # "train" or "test"


@dataclasses.dataclass(frozen=True)
class CategoryCapabilities:
    """What can be measured on one category; drives which metrics are computed."""

    n_normal: int
    n_anomalous: int
    has_masks: bool

    @property
    def image_metrics(self) -> bool:
        return self.n_normal > 0 and self.n_anomalous > 0

    @property
    def pixel_metrics(self) -> bool:
        return self.has_masks and self.n_anomalous > 0


@dataclasses.dataclass
class DatasetIndex:
    """All samples of one dataset root, as parsed from its raw layout."""

    dataset: str
    root: Path
    records: list[SampleRecord]
    has_masks: bool  # the dataset provides pixel ground truth for its anomalous images
    version: str = "official"  # which release/conversion was indexed (SDD, DAGM, polyp sets differ)

    def categories(self) -> list[str]:
        """Category ids in first-seen order (parsers emit them sorted)."""
        return list(dict.fromkeys(r.category for r in self.records))

    def select(self, split: str | None = None, categories: Sequence[str] | None = None) -> DatasetIndex:
        """A sub-index; unknown categories are an error that lists the known ones."""
        records = self.records
        if categories:
            known = set(self.categories())
            unknown = [c for c in categories if c not in known]
            if unknown:
                raise ZsadError(
                    f"unknown categories {unknown} for dataset '{self.dataset}' at {self.root}; "
                    f"known: {sorted(known)}"
                )
            wanted = set(categories)
            records = [r for r in records if r.category in wanted]
        if split is not None:
            records = [r for r in records if r.split == split]
        return dataclasses.replace(self, records=list(records))

    def capabilities(self) -> dict[str, CategoryCapabilities]:
        normal: collections.Counter[str] = collections.Counter()
        anomalous: collections.Counter[str] = collections.Counter()
        for r in self.records:
            (anomalous if r.label else normal)[r.category] += 1
        return {
            c: CategoryCapabilities(normal[c], anomalous[c], self.has_masks) for c in self.categories()
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """Per category: number of normal and anomalous images (for checks and reports)."""
        return {
            c: {"normal": cap.n_normal, "anomalous": cap.n_anomalous}
            for c, cap in self.capabilities().items()
        }

    def prompt_names(self) -> dict[str, str]:
        return {r.category: r.prompt_name for r in self.records}


Parser = Callable[[Path], DatasetIndex]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a benchmark plus the parser of its raw layout."""

    name: str
    parse: Parser
    categories: tuple[str, ...]
    has_masks: bool
    has_normals: bool
    domain: str  # "industrial" or "medical"; used for prompt templates and reports
    expected_test_counts: dict[str, tuple[int, int]] | None = None  # category -> (normal, anomalous)
    description: str = ""


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset '{spec.name}' registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_dataset_spec(name: str) -> DatasetSpec:
    _load_builtin_parsers()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ZsadError(f"unknown dataset '{name}'; known: {', '.join(sorted(_REGISTRY))}") from None


def dataset_names() -> list[str]:
    _load_builtin_parsers()
    return sorted(_REGISTRY)


def build_index(name: str, root: str | Path) -> DatasetIndex:
    """Parse ``root`` with the parser registered for ``name``."""
    spec = get_dataset_spec(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(
            f"dataset root for '{name}' does not exist: {root} "
            f"(set data.root=/path/to/{name} or download the dataset there)"
        )
    index = spec.parse(root)
    if not index.records:
        raise DatasetLayoutError(f"no images found for dataset '{name}' under {root}; is this the right folder?")
    return index


def _load_builtin_parsers() -> None:
    # Parsers register themselves on import; importing here avoids import cycles at module load.
    from datamodules import parsers  # noqa: F401


def list_image_files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    """Sorted image files of one folder, matching extensions case-insensitively; hidden files skipped."""
    exts = {e.lower() for e in extensions}
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)
