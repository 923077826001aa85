"""One index format for every benchmark.

Each dataset parser reads its official raw layout and returns a :class:`DatasetIndex`: a flat list of
:class:`SampleRecord` plus what the dataset can and cannot be evaluated on. Everything downstream (the
torch dataset, the DataModule, evaluation) only sees this index, so adding a benchmark means adding one
parser and one :class:`DatasetSpec`.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datamodules.errors import ConfigError, DatasetLayoutError, ZsadError
from datamodules.regions import RegionRules

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
    # Multi-view datasets (Real-IAD): the physical sample this view belongs to; the sample-level metrics
    # score a sample by the maximum over its views. None: the image is a sample of its own.
    group: str | None = None


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
    # Found while parsing, reported by `zsad data check`; loading works regardless.
    warnings: list[str] = dataclasses.field(default_factory=list)  # ignored things (a stray pred/ folder)
    problems: list[str] = dataclasses.field(
        default_factory=list
    )  # the copy looks incomplete (unpaired masks)
    # Datasets whose masks are folders of one PNG per defect region with a defects_config.json (MVTec LOCO,
    # AutoVI): per category, the pixel value -> saturation rule of each defect, for the sPRO metric.
    region_rules: dict[str, RegionRules] = dataclasses.field(default_factory=dict)
    # Categories without pixel ground truth in a dataset that has masks for the others (BMAD's image-level
    # subsets): no pixel metrics there, and their anomalous images need no mask.
    mask_free_categories: frozenset[str] = frozenset()
    # Categories that are rows of one object (MVTec LOCO's logical and structural rows: the object's test set
    # split by anomaly type, one training pool, one folder): category -> the object's folder. Few-shot draws
    # are seeded by it, so the rows get the same references (datamodules/references.py), and it is the
    # category's folder name in prompts (AnomalyDataModule.category_folders).
    row_objects: dict[str, str] = dataclasses.field(default_factory=dict)

    def category_has_masks(self, category: str) -> bool:
        return self.has_masks and category not in self.mask_free_categories

    def categories(self) -> list[str]:
        """Category ids in first-seen order (parsers emit them sorted)."""
        return list(dict.fromkeys(r.category for r in self.records))

    def once_per_image(self) -> DatasetIndex:
        """The index with each image file once, in the first category that holds it: a training set must
        not see MVTec LOCO's good images twice because both rows of their object list them."""
        seen: set[Path] = set()
        records = []
        for record in self.records:
            if record.image_path not in seen:
                seen.add(record.image_path)
                records.append(record)
        return self if len(records) == len(self.records) else dataclasses.replace(self, records=records)

    def shared_images(self) -> set[Path]:
        """The image files that more than one category holds (MVTec LOCO's good test images, in the logical
        and the structural row of their object): what is saved per image is saved per row for them."""
        held: dict[Path, set[str]] = {}
        for record in self.records:
            held.setdefault(record.image_path, set()).add(record.category)
        return {path for path, categories in held.items() if len(categories) > 1}

    def category_populations(self) -> list[int]:
        """Per category (``categories()`` order), the id of the test population it belongs to: the rows of one
        object (``row_objects``: MVTec LOCO's logical and structural rows) are one population, every other
        category its own. What depends on a whole category's test images (MuSc's mutual scoring, VAND's and
        Bayes-PFL's per-category score rules) sees its population's images, as the authors' code sees an
        object's folder: a good image then gets one score and map in both rows, and the test set is not
        split by anomaly type before it is scored."""
        ids: dict[str, int] = {}
        return [ids.setdefault(self.row_objects.get(c, c), len(ids)) for c in self.categories()]

    def image_ids(self) -> list[int]:
        """Per record, the position of the first record of the same image file: records that share an image
        (``shared_images``) share its id, so a population counts the image once."""
        first: dict[Path, int] = {}
        return [first.setdefault(record.image_path, i) for i, record in enumerate(self.records)]

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
            c: CategoryCapabilities(normal[c], anomalous[c], self.category_has_masks(c))
            for c in self.categories()
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """Per category: number of normal and anomalous images (for checks and reports)."""
        return {
            c: {"normal": cap.n_normal, "anomalous": cap.n_anomalous}
            for c, cap in self.capabilities().items()
        }

    def prompt_names(self) -> dict[str, str]:
        return {r.category: r.prompt_name for r in self.records}


Parser = Callable[..., DatasetIndex]  # (root, **options) -> index
CountTable = Mapping[str, tuple[int, int]]  # category -> (normal, anomalous) test images


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
    # Datasets that circulate in several versions: the test counts of each version the parser can
    # record in ``DatasetIndex.version``; a version missing here has no known counts.
    version_test_counts: Mapping[str, CountTable] = dataclasses.field(default_factory=dict)
    expected_test_total: tuple[int, int] | None = (
        None  # when only the total is known (no per-category counts)
    )
    counts_verified: bool = True  # False: counts from papers, not confirmed; a mismatch is only a warning
    # Versions whose category rows differ from ``categories`` (MVTec LOCO's rows=object).
    version_categories: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def categories_of(self, version: str) -> tuple[str, ...]:
        """The category ids an indexed version has (``categories`` unless the version names its own)."""
        return tuple(self.version_categories.get(version, self.categories))

    def expected_counts(self, version: str | None = None) -> CountTable | None:
        """Expected per-category test counts of an indexed version (``DatasetIndex.version``); None when
        not known. ``version=None``: the default version's, as ``zsad data list`` shows them."""
        if version is None:
            return self.expected_test_counts
        if self.version_test_counts:
            return self.version_test_counts.get(version)
        return self.expected_test_counts if version == "official" else None

    def expected_total(self, version: str | None = None) -> tuple[int, int] | None:
        """Expected (normal, anomalous) test images over all categories; None when not known."""
        counts = self.expected_counts(version)
        if counts:
            return sum(n for n, _ in counts.values()), sum(a for _, a in counts.values())
        if version is None or (version == "official" and not self.version_test_counts):
            return self.expected_test_total
        return None

    def option_names(self) -> list[str]:
        """Keyword options of the parser (e.g. COVID's folder choice), passed via ``build_index``."""
        params = list(inspect.signature(self.parse).parameters.values())[1:]
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


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


def known_category_names() -> set[str]:
    """Every category id of every registered dataset and version: a name in none of them (nor in the
    data at hand) is most likely a typo."""
    _load_builtin_parsers()
    names = set()
    for spec in _REGISTRY.values():
        names.update(spec.categories)
        for categories in spec.version_categories.values():
            names.update(categories)
    return names


def build_index(name: str, root: str | Path, **options: Any) -> DatasetIndex:
    """Parse ``root`` with the parser registered for ``name``; ``options`` go to the parser
    (``DataConfig.options``, ``zsad data check --option``)."""
    spec = get_dataset_spec(name)
    if options:
        known = spec.option_names()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"dataset '{name}' has no option(s) {unknown}; "
                + (f"known: {known}" if known else "it takes no options")
            )
    root = Path(root).expanduser()
    if not root.is_dir():
        if name == "synthetic":  # generated, never downloaded
            raise DatasetLayoutError(
                f"dataset root for '{name}' does not exist: {root} ({_synth_hint(root)})"
            )
        raise DatasetLayoutError(
            f"dataset root for '{name}' does not exist: {root} "
            f"(set source.root=/path/to/{name} or targets.N.root=/path/to/{name}, or data_root=DIR for every "
            "dataset; --root for zsad data check; or download the dataset there)"
        )
    index = spec.parse(root, **options)
    if not index.records:
        raise DatasetLayoutError(
            f"no images found for dataset '{name}' under {root}; is this the right folder?"
        )
    return index


def _synth_hint(root: Path) -> str:
    """How to write the synthetic dataset a config points at (its folder name is the style the configs use)."""
    from datamodules.synthetic_render import STYLES

    style = root.name if root.name in STYLES else "|".join(sorted(STYLES))
    return (
        f"generate it: zsad data synth --out {root} --style {style}; `zsad demo` writes both synthetic "
        "datasets under its output folder"
    )


def _load_builtin_parsers() -> None:
    # Parsers register themselves on import; importing here avoids import cycles at module load.
    from datamodules import parsers  # noqa: F401


def list_image_files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    """Sorted image files of one folder, matching extensions case-insensitively; hidden files skipped."""
    exts = {e.lower() for e in extensions}
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    )
