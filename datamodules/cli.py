"""``zsad data list`` and ``zsad data check`` (registered by ``pipelines/cli.py``; light to import).

``list`` shows what each benchmark offers (classes, masks, normal images, expected test counts), so a
user knows which metrics a dataset can give before running anything. ``check`` indexes a raw folder,
opens every image and mask, compares the counts with the expected ones and exits non-zero with a
report of everything that is wrong -- the step to run after downloading a dataset.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from datamodules.errors import ZsadError
from datamodules.index import DatasetIndex, DatasetSpec, build_index, dataset_names, get_dataset_spec
from datamodules.parsers.common import DatasetLayoutProblems

MAX_PRINTED = 100  # errors/warnings printed per section; the summary gives the full count
# `zsad data check` decodes every file of datasets up to this many images unless told (--decode/--no-decode):
# reading headers only passes truncated files, decoding a large benchmark takes minutes.
DECODE_AUTO_MAX_IMAGES = 2000


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _total(spec: DatasetSpec, version: str | None = None) -> str:
    total = spec.expected_total(version)
    if total is None:
        return "?"
    return f"{total[0]} / {total[1]}" + ("" if spec.counts_verified else " [verify]")


# --------------------------------------------------------------------------------------------------
# zsad data list


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``zsad data list``."""
    parser.add_argument("names", nargs="*", help="datasets to show (default: all registered)")


def run_list(args: argparse.Namespace) -> int:
    names = list(args.names) or dataset_names()
    specs = [get_dataset_spec(n) for n in names]
    rows = [
        (
            s.name,
            s.domain,
            str(len(s.categories)) if s.categories else "found",
            _yes(s.has_masks),
            _yes(s.has_normals),
            _total(s),
            s.description,
        )
        for s in specs
    ]
    header = ("name", "domain", "classes", "masks", "normals", "test normal / anomalous", "description")
    print("\n".join(_table(header, rows, (False, False, True, False, False, True, False))))
    print()
    print("no normal images: no image-level metrics; no masks: no pixel-level metrics.")
    print(
        "zero-shot protocol: a method trains on the source dataset's *test* split, then is evaluated on the targets."
    )
    for s in specs:
        print(
            f"\n{s.name}: {', '.join(s.categories) if s.categories else '(categories found under the root)'}"
        )
        if s.version_test_counts:
            versions = ", ".join(f"{v} ({_total(s, v)})" for v in s.version_test_counts)
            print(f"  versions: {versions}")
        if s.option_names():
            print(f"  options: {', '.join(s.option_names())} (data.options / --option KEY=VALUE)")
    return 0


# --------------------------------------------------------------------------------------------------
# zsad data check


@dataclasses.dataclass
class CheckReport:
    """Outcome of checking one dataset root; ``ok`` is False when anything needs fixing."""

    name: str
    root: Path
    index: DatasetIndex | None = None
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    table: list[str] = dataclasses.field(default_factory=list)
    n_checked: int = 0
    decoded: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def _check_files(index: DatasetIndex, decode: bool, report: CheckReport) -> None:
    """Open every image and mask; masks must exist for anomalous images and match the image size."""
    # Image decoding and the progress bar (PIL, numpy, Lightning's bar) load only for a check, so that
    # `zsad data list` and `zsad --help` answer at once.
    from datamodules.images import image_size, load_image_rgb, load_mask, mask_size
    from datamodules.progress import progress

    # One image may serve several category rows (MVTec LOCO's good images are in its logical and its
    # structural row), never twice in one.
    seen: collections.Counter[tuple[str, Path]] = collections.Counter(
        (r.category, r.image_path) for r in index.records
    )
    for (category, path), n in seen.items():
        if n > 1:
            report.errors.append(f"image {path} is indexed {n} times in category {category}")
    records = progress(index.records, "checking images", unit="img") if decode else index.records
    for r in records:
        try:
            if decode:
                h, w = load_image_rgb(r.image_path).shape[:2]
            else:
                w, h = image_size(r.image_path)
        except ZsadError as error:
            report.errors.append(str(error))
            continue
        report.n_checked += 1
        if r.mask_path is None:
            if index.category_has_masks(r.category) and r.label == 1 and r.split == "test":
                report.errors.append(f"anomalous image {r.image_path} has no mask")
            continue
        try:
            if decode:
                mh, mw = load_mask(r.mask_path).shape
            else:
                mw, mh = mask_size(r.mask_path)
        except ZsadError as error:
            report.errors.append(str(error))
            continue
        if (mw, mh) != (w, h):
            report.errors.append(f"mask {r.mask_path} is {mw}x{mh} but image {r.image_path} is {w}x{h}")


def _count_table(
    index: DatasetIndex, spec: DatasetSpec, report: CheckReport, missing: Sequence[str] = ()
) -> None:
    expected = spec.expected_counts(index.version)
    test = index.select(split="test")
    counts = test.counts()
    train = collections.Counter(r.category for r in index.records if r.split == "train")
    caps = test.capabilities()
    mismatch = report.errors if spec.counts_verified else report.warnings
    note = "" if spec.counts_verified else " (expected counts not confirmed [verify])"
    rows = []
    categories = list(dict.fromkeys([*index.categories(), *counts, *missing]))
    for c in categories:
        got = counts.get(c, {"normal": 0, "anomalous": 0})
        exp = expected.get(c) if expected else None
        status = (
            "?" if exp is None else "ok" if (got["normal"], got["anomalous"]) == tuple(exp) else "MISMATCH"
        )
        if c in missing:
            status = "MISSING"  # reported once as an error by check_dataset
        elif status == "MISMATCH":
            mismatch.append(
                f"{c}: {got['normal']} normal / {got['anomalous']} anomalous test images, "
                f"expected {exp[0]} / {exp[1]}{note}"
            )
        cap = caps.get(c)
        rows.append(
            (
                c,
                str(got["normal"]),
                "?" if exp is None else str(exp[0]),
                str(got["anomalous"]),
                "?" if exp is None else str(exp[1]),
                str(train.get(c, 0)),
                _yes(cap.image_metrics) if cap else "no",
                _yes(cap.pixel_metrics) if cap else "no",
                status,
            )
        )
    n_normal = sum(v["normal"] for v in counts.values())
    n_anomalous = sum(v["anomalous"] for v in counts.values())
    total = spec.expected_total(index.version)
    total_status = "?" if total is None else "ok" if (n_normal, n_anomalous) == total else "MISMATCH"
    if total_status == "MISMATCH" and not expected:  # per-category mismatches are reported above
        mismatch.append(
            f"{n_normal} normal / {n_anomalous} anomalous test images in total, expected {total[0]} / {total[1]}{note}"
        )
    rows.append(
        (
            "total",
            str(n_normal),
            "?" if total is None else str(total[0]),
            str(n_anomalous),
            "?" if total is None else str(total[1]),
            str(sum(train.values())),
            "",
            "",
            total_status,
        )
    )
    header = (
        "category",
        "normal",
        "expected",
        "anomalous",
        "expected",
        "train",
        "image metrics",
        "pixel metrics",
        "",
    )
    report.table = _table(header, rows, (False, True, True, True, True, True, False, False, False))


def check_dataset(
    name: str,
    root: str | Path,
    options: dict[str, str] | None = None,
    decode: bool | None = None,
    categories: Sequence[str] | None = None,
) -> CheckReport:
    """Index ``root`` as dataset ``name`` and validate it; never raises for problems in the data.

    ``decode=None`` decodes every file when there are at most :data:`DECODE_AUTO_MAX_IMAGES` images."""
    report = CheckReport(name=name, root=Path(root))
    try:
        spec = get_dataset_spec(name)
        index = build_index(name, root, **(options or {}))
        if categories:
            index = index.select(categories=categories)
    except DatasetLayoutProblems as error:
        report.errors.extend(error.problems)
        return report
    except ZsadError as error:
        report.errors.append(str(error))
        return report
    report.index = index
    report.warnings.extend(index.warnings)
    report.errors.extend(index.problems)
    missing: list[str] = []
    known = spec.categories_of(index.version)
    if known:
        found = set(index.categories())
        if not categories:
            missing = [c for c in known if c not in found]
            if missing:
                report.errors.append(
                    f"{len(missing)} categor{'y' if len(missing) == 1 else 'ies'} missing under {index.root} "
                    f"(no images indexed): {', '.join(missing)}"
                )
        for c in index.categories():
            if c not in known:
                report.warnings.append(f"category {c} is not one of {name}'s categories")
    report.decoded = len(index.records) <= DECODE_AUTO_MAX_IMAGES if decode is None else decode
    _check_files(index, report.decoded, report)
    _count_table(index, spec, report, missing)
    return report


def format_report(report: CheckReport) -> str:
    lines = []
    index = report.index
    head = f"{report.name} at {report.root}"
    if index is not None:
        head += f" (version: {index.version}, masks: {_yes(index.has_masks)}, {len(index.records)} images indexed)"
    lines.append(head)
    if report.table:
        lines.append("test split, per category:")
        lines.extend("  " + line for line in report.table)
    for title, items in (("warnings", report.warnings), ("errors", report.errors)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  - {item}" for item in items[:MAX_PRINTED])
            if len(items) > MAX_PRINTED:
                lines.append(f"  ... and {len(items) - MAX_PRINTED} more")
    if index is not None:
        lines.append(
            "every image and mask decoded"
            if report.decoded
            else "headers only (sizes), files not decoded: a truncated file passes; --decode decodes every file"
        )
    if report.ok:
        lines.append(f"OK: {report.n_checked} images checked, {len(report.warnings)} warning(s)")
    else:
        lines.append(f"FAILED: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)


def parse_option(text: str) -> tuple[str, str]:
    """``--option KEY=VALUE`` of a dataset parser (``zsad data check``, ``zsad evaluate-maps``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``zsad data check``."""
    parser.add_argument("name", help="registered dataset name (see `zsad data list`)")
    parser.add_argument("--root", type=Path, required=True, help="the dataset's raw folder")
    parser.add_argument(
        "--option",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parser option, e.g. --option anomalous=COVID,Lung_Opacity for covid (repeatable)",
    )
    parser.add_argument("--categories", nargs="+", default=None, help="check only these categories")
    parser.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"decode every file (--no-decode: read headers only; default: decode when there are at most "
        f"{DECODE_AUTO_MAX_IMAGES} images)",
    )


def run_check(args: argparse.Namespace) -> int:
    categories = [c for item in args.categories or [] for c in item.split(",") if c] or None
    report = check_dataset(args.name, args.root, dict(args.option), decode=args.decode, categories=categories)
    print(format_report(report))
    return 0 if report.ok else 1
