"""Grouping finished runs for reports: which runs are the same setting, what a cell may average.

A run's *setting* is its resolved ``config.yaml`` flattened to dotted keys, minus :data:`IGNORED_KEYS`
(the seed, paths, logging, speed knobs); a target's own keys appear as ``target.*``. Columns are
distinct settings, rows are targets; a cell keeps one entry per (setting, seed), the newest of identical
reruns, and names anything else it mixes.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import ConfigError, ZsadError
from datamodules.fingerprint import EVERY_FILE_HASHED
from lightning_modules.method_spec import flatten
from pipelines.protocol import shots_label

# Config keys (dotted, fnmatch patterns) that do not change a run's numbers: where things are read and
# written, logging, and how fast it runs. Everything else separates settings. ``seed`` is the replicate axis.
IGNORED_KEYS = (
    "seed",
    "name",  # the experiment's label; its settings are the other keys
    "description",
    "run_dir",
    "output_dir",
    "data_root",
    "checkpoint",  # the trained weights of a test run: with the seed, the replicate (RunRecord.replicate)
    "logger.*",  # W&B / CSV logging
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "*.root",  # where a dataset lies; its identity is checked through the results (version, n_images)
    "*.num_workers",
    "*.pin_memory",
    "*cache_dir",  # feature caches and CLIP weight caches
    "*.cache_features",  # same learned parameters with or without the feature cache
    "*.cache_max_gb",
    "eval.save_maps",
    "eval.visualize",  # pictures of an evaluation
    "eval.gallery_size",
    "protocol.draws",  # how many reference draws a few-shot run made: each draw is a replicate, like a seed
    "protocol.references",  # the lists naming each draw's references (selection listed): replicates too
)
#: The protocol key that separates settings (zero-shot and k-shot columns side by side); absent in the
#: configs of runs older than the protocol, which were zero-shot.
SHOTS_KEY = "protocol.shots"
METHOD_PREFIX = "method."
TRAINED_PREFIX = "trained."  # a test run's checkpoint's training setting (results.json trained_setting)
TARGET_PREFIX = "target."  # a target's own settings in a cell's setting (from ``targets.N.*``)
TRAINED_METHOD = (
    f"{TRAINED_PREFIX}{METHOD_PREFIX}"  # the method settings a test run's weights were trained in
)
# Fields of a target's results that must agree for runs to be the same experiment on the same data.
DATA_FIELDS = ("version", "n_images", "split", "image_size", "eval_size", "preprocessing", "options")
CFLOW_AUPRO = "aupro_cflow"  # the papers' 200-threshold AUPRO, beside the exact one in results.json
ABSENT = "—"


@dataclasses.dataclass
class RunRecord:
    """One finished run: its results and its setting (flattened, ignored keys removed)."""

    run_dir: Path
    results: dict[str, Any]
    setting: dict[str, Any]  # without targets.*
    target_settings: list[dict[str, Any]]  # one per configured target, keys without the prefix
    seed: Any
    has_config: bool
    checkpoint: str | None = (
        None  # a `zsad test` run's weights: runs of other checkpoints are other replicates
    )
    outputs: Path | None = None  # where its maps and plots are (a few-shot draw's: RUN/draws/{draw})

    @property
    def output_dir(self) -> Path:
        return self.outputs or self.run_dir

    @property
    def draw(self) -> Any:
        """The few-shot reference draw of the run (``draw`` in results.json; None where the run has none)."""
        return self.results.get("draw")

    @property
    def replicate(self) -> str:
        """What a cell averages over: the seed (and the draw, where a run records one), and for test runs
        the checkpoint they evaluated."""
        parts = [self.seed, self.checkpoint] + ([self.draw] if self.draw is not None else [])
        return json.dumps(parts, default=str)

    @property
    def seed_label(self) -> str:
        """The seed as shown; a test run adds its checkpoint's run folder (RUN/checkpoints/x.ckpt), a run
        with a reference draw adds ``/draw``."""
        label = str(self.seed)
        if self.checkpoint:
            path = Path(self.checkpoint)
            label += f"@{path.parent.parent.name if path.parent.name == 'checkpoints' else path.name}"
        return label if self.draw is None else f"{label}/draw{self.draw}"


@dataclasses.dataclass
class Entry:
    """One (run, target) measurement."""

    run: RunRecord
    target_key: str
    payload: dict[str, Any]
    setting: dict[str, Any]  # the run's setting + ``target.*``

    @property
    def created(self) -> str:
        return str(self.run.results.get("created") or "")


@dataclasses.dataclass
class Cell:
    row: str
    column: str
    entries: list[Entry]  # one per distinct (setting, seed): identical reruns removed

    def values(self, metric: str, category: str | None = None) -> list[float]:
        """The replicates' numbers of ``metric``: their category means, or one category's values."""
        found = (metric_value(e, metric, category) for e in self.entries)
        return [v for v in found if v is not None]

    def categories(self) -> list[str]:
        """The categories any replicate evaluated, in the order of the first that has them."""
        return list(dict.fromkeys(c for e in self.entries for c in e.payload.get("categories") or {}))


# --- loading ------------------------------------------------------------------------------------------
def is_ignored(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in IGNORED_KEYS)


def _without_ignored(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not is_ignored(k)}


def _setting_from_results(results: dict[str, Any]) -> dict[str, Any]:
    """What a results.json alone says about a run without config.yaml (older or hand-made runs)."""
    flat = {"method.name": results.get("method"), "source.name": results.get("source")}
    flat[SHOTS_KEY] = (results.get("protocol") or {}).get("shots", 0)
    flat.update(flatten(results.get("eval") or {}, "eval."))
    return _without_ignored(flat)


def _trained_keys(results: dict[str, Any]) -> dict[str, Any]:
    """A `zsad test` run's weights' training setting (results.json ``trained_setting``: method, source,
    trainer) as ``trained.*`` keys: test runs of checkpoints trained differently are other settings, not
    replicates of one. (A `zsad run` records its own, which its config already is.)"""
    trained = results.get("trained_setting")
    if not isinstance(trained, dict):
        return {}
    return {f"{TRAINED_PREFIX}{k}": v for k, v in flatten(trained).items() if not is_ignored(k)}


def load_run(run_dir: Path) -> RunRecord | None:
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise ZsadError(
            f"{run_dir / 'results.json'} is not valid JSON ({error}); rerun or remove it"
        ) from None
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        return RunRecord(run_dir, results, _setting_from_results(results), [], results.get("seed"), False)
    config = yaml.safe_load(config_path.read_text()) or {}
    targets = config.pop("targets", None) or []
    # a test run's weights were trained elsewhere (``checkpoint=``): their setting joins its own
    trained = _trained_keys(results) if config.get("checkpoint") else {}
    setting = {SHOTS_KEY: 0, **_without_ignored(flatten(config)), **trained}
    target_settings = [
        {k: v for k, v in flatten(t).items() if not is_ignored(f"{TARGET_PREFIX}{k}")} for t in targets
    ]
    return RunRecord(
        run_dir, results, setting, target_settings, config.get("seed"), True, config.get("checkpoint")
    )


def load_runs(run_dir: Path) -> list[RunRecord]:
    """The run's record, or for a few-shot run one record per finished reference draw (its ``draw``, the
    draw's targets and outputs): the replicates a cell averages over, like seeds."""
    run = load_run(run_dir)
    if run is None:
        return []
    draws = [d for d in run.results.get("draws") or [] if d.get("targets")]
    if not draws:
        return [run]
    return [
        dataclasses.replace(
            run,
            results={**run.results, "draw": d["draw"], "targets": d["targets"]},
            outputs=run.run_dir / "draws" / str(d["draw"]),
        )
        for d in draws
    ]


def entries_of(runs: list[RunRecord]) -> list[Entry]:
    """One entry per evaluated target. results.json lists the targets in config order (a prefix of it
    when a later target failed), so the N-th result belongs to ``targets.N``."""
    entries = []
    for run in runs:
        for index, (key, payload) in enumerate(run.results.get("targets", {}).items()):
            own = (
                run.target_settings[index]
                if index < len(run.target_settings)
                else {"name": payload.get("dataset")}
            )
            setting = {**run.setting, **{f"{TARGET_PREFIX}{k}": v for k, v in own.items()}}
            entries.append(Entry(run, key, payload, setting))
    return entries


def metric_value(entry: Entry, metric: str, category: str | None = None) -> float | None:
    """A cell's number: the category mean, or one category's value (None where undefined or absent).
    ``aupro_cflow`` falls back to ``aupro`` of older runs whose ``aupro`` was the cflow AUPRO
    (``eval.aupro_method=legacy_cflow`` before both were recorded)."""
    if category is None:
        numbers = entry.payload.get("mean", {})
    else:
        numbers = (entry.payload.get("categories") or {}).get(category) or {}
    legacy = (entry.run.results.get("eval") or {}).get("aupro_method") == "legacy_cflow"
    if metric == CFLOW_AUPRO and numbers.get(CFLOW_AUPRO) is None and legacy:
        return _number(numbers.get("aupro"))
    return _number(numbers.get(metric))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- grouping -----------------------------------------------------------------------------------------
def _frozen(setting: dict[str, Any], keys: Iterable[str]) -> tuple:
    return tuple((k, json.dumps(setting.get(k, ABSENT), sort_keys=True, default=str)) for k in sorted(keys))


def _show(value: Any) -> str:
    return ABSENT if value is None else json.dumps(value) if isinstance(value, dict | list) else str(value)


def _short_names(keys: Iterable[str], universe: Iterable[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key of ``universe`` ends with."""
    universe = set(universe)
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(
                other != key and (other == suffix or other.endswith("." + suffix)) for other in universe
            ):
                break
        names[key] = suffix
    return names


def _check_group_by(keys: list[str], entries: list[Entry]) -> None:
    known = {k for e in entries for k in e.setting} | {"seed"}
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = (
                f"; did you mean '{close[0]}'?"
                if close
                else " (keys are dotted, e.g. method.lr, target.name)"
            )
            raise ConfigError(f"--group-by: no run has the config key '{key}'{hint}")


@dataclasses.dataclass
class Grouping:
    cells: dict[tuple[str, str], Cell]
    rows: list[str]
    columns: list[str]
    column_method: dict[str, str]  # label -> method name (for the published numbers)
    column_keys: dict[str, str]  # label -> its distinguishing keys in full (key=value, ...)
    column_seeds: dict[str, list[Any]]
    warnings: list[str]
    notes: list[str]
    column_shots: dict[str, int] = dataclasses.field(default_factory=dict)  # label -> K (0: zero-shot)
    # label -> the distinct method settings of its runs (``method.*`` keys without the prefix): which
    # published numbers stand beside it (MethodSpec.published_for)
    column_method_settings: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    # labels whose runs differ in method or protocol.shots (--group-by can merge them): column_method and
    # column_shots hold one run's, and no single setting's published numbers belong beside them
    mixed_columns: set[str] = dataclasses.field(default_factory=set)


def group(entries: list[Entry], group_by: list[str] | None = None) -> Grouping:
    """Rows: targets (split by their differing ``target.*`` keys); columns: settings (see module doc)."""
    all_keys = sorted({k for e in entries for k in e.setting})
    if group_by:
        _check_group_by(group_by, entries)
        keys = [k for k in group_by if k != "seed"]
    else:
        keys = all_keys
    column_keys = [k for k in keys if not k.startswith(TARGET_PREFIX)]
    row_keys = [k for k in keys if k.startswith(TARGET_PREFIX) and k != f"{TARGET_PREFIX}name"]

    # Without config.yaml a run's setting is a few keys from results.json: such runs form their own
    # columns (by those keys) unless --group-by names the keys for everyone.
    raw_apart = not group_by

    def row_id(e: Entry) -> tuple:
        if raw_apart and not e.run.has_config:
            return (e.target_key, None)
        return (e.target_key, _frozen(e.setting, row_keys))

    def column_id(e: Entry) -> tuple:
        if raw_apart and not e.run.has_config:
            return ("no config.yaml", _frozen(e.setting, e.setting))
        return ("", _frozen(e.setting, column_keys))

    rows_of: dict[str, set[tuple]] = defaultdict(set)
    for e in entries:
        rows_of[e.target_key].add(row_id(e)[1])
    row_labels = {}
    for target, variants in rows_of.items():
        known = [dict(v) for v in variants if v is not None]
        varying = [k for k in row_keys if len({v[k] for v in known}) > 1]
        for variant in variants:
            values = dict(variant or ())
            extra = ", ".join(
                f"{k[len(TARGET_PREFIX) :]}={json.loads(values[k])}" for k in varying if k in values
            )
            row_labels[(target, variant)] = f"{target} ({extra})" if extra else target

    column_labels: dict[tuple, str] = {}
    descriptions: dict[tuple, str] = {}
    for kind in ("", "no config.yaml"):
        part = {column_id(e)[1]: e.setting for e in entries if column_id(e)[0] == kind}
        part_keys = sorted({k for setting in part.values() for k in setting if k in column_keys or kind})
        labels, described = _column_labels(part, part_keys, all_keys)
        for cid, label in labels.items():
            column_labels[(kind, cid)] = f"{label} ({kind})" if kind else label
            descriptions[(kind, cid)] = described[cid]
    column_method: dict[str, str] = {}
    column_shots: dict[str, int] = {}
    kinds: dict[str, set[tuple[str, int]]] = defaultdict(set)
    column_method_settings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        label = column_labels[column_id(e)]
        column_method[label] = str(e.setting.get("method.name", "?"))
        column_shots[label] = _shots(e.setting)
        kinds[label].add((column_method[label], column_shots[label]))
        settings = {k[len(METHOD_PREFIX) :]: v for k, v in e.setting.items() if k.startswith(METHOD_PREFIX)}
        # a test run's weights were trained in their own method settings: those must be the paper's too
        trained = {k[len(TRAINED_METHOD) :]: v for k, v in e.setting.items() if k.startswith(TRAINED_METHOD)}
        for found in (settings, trained) if trained else (settings,):
            if found not in column_method_settings[label]:
                column_method_settings[label].append(found)
    mixed_columns = {label for label, found in kinds.items() if len(found) > 1}

    buckets: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for e in entries:
        buckets[(row_labels[row_id(e)], column_labels[column_id(e)])].append(e)
    warnings: list[str] = []
    notes: list[str] = []
    cells = {}
    for (row, column), members in buckets.items():
        kept = _drop_reruns(members, all_keys, row, column, notes)
        kept = _merge_seed_independent(kept, all_keys, row, column, notes)
        warnings += _mixing_warnings(kept, all_keys, row, column)
        cells[(row, column)] = Cell(row, column, kept)

    missing_config = sorted({str(e.run.run_dir) for e in entries if not e.run.has_config})
    if missing_config:
        warnings.insert(
            0,
            f"{len(missing_config)} run(s) have no config.yaml and are grouped only by method, source and "
            f"eval settings, which may mix settings: {', '.join(missing_config)}",
        )
    # a method's columns side by side, zero-shot first, then by K (not "1-shot, 2-shot, zero-shot")
    ordered_columns = sorted(
        set(column_labels.values()), key=lambda c: (column_method[c], column_shots[c], c)
    )
    column_seeds = {
        label: sorted({e.run.seed_label for c in cells.values() if c.column == label for e in c.entries})
        for label in ordered_columns
    }
    rows = sorted(set(row_labels.values()))
    column_described = {column_labels[cid]: descriptions[cid] for cid in column_labels}
    return Grouping(
        cells,
        rows,
        ordered_columns,
        column_method,
        column_described,
        column_seeds,
        warnings,
        notes,
        column_shots,
        dict(column_method_settings),
        mixed_columns,
    )


def _shots(setting: dict[str, Any]) -> int:
    value = setting.get(SHOTS_KEY, 0)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _column_labels(
    columns: dict[tuple, dict[str, Any]], column_keys: list[str], all_keys: list[str]
) -> tuple[dict[tuple, str], dict[tuple, str]]:
    """``method [from SOURCE] key=value ...``: the keys that differ between columns of the same method
    (shortest unambiguous names), and the same keys in full."""
    method = {cid: str(s.get("method.name", "?")) for cid, s in columns.items()}
    source = {cid: s.get("source.name") for cid, s in columns.items()}
    several_sources = len(set(source.values())) > 1
    # once any column is k-shot or transductive, every label names its protocol (zero-shot / transductive /
    # k-shot) after the method
    shots = {cid: _shots(s) for cid, s in columns.items()}
    protocol = {cid: shots_label(shots[cid], method[cid]) for cid in columns}
    name_protocol = any(label != shots_label(0) for label in protocol.values())
    labels, descriptions = {}, {}
    short = _short_names(column_keys, all_keys)
    for cid in columns:
        siblings = [c for c in columns if method[c] == method[cid]]
        varying = [
            k
            for k in column_keys
            if k not in ("method.name", "source.name", *([SHOTS_KEY] if name_protocol else ()))
            and len({dict(c)[k] for c in siblings}) > 1
        ]
        parts = [method[cid], *([protocol[cid]] if name_protocol else [])]
        if several_sources:
            parts.append(f"from {_show(source[cid])}")
        parts += [f"{short[k]}={_show(json.loads(dict(cid)[k]))}" for k in varying]
        labels[cid] = " ".join(parts)
        shown = [k for k in ("method.name", "source.name") if k in column_keys] + varying
        described = [f"{k}={_show(json.loads(dict(cid)[k]))}" for k in shown]
        descriptions[cid] = ", ".join([*described, *([f"{SHOTS_KEY}={shots[cid]}"] if name_protocol else [])])
    return labels, descriptions


def _drop_reruns(
    members: list[Entry], all_keys: list[str], row: str, column: str, notes: list[str]
) -> list[Entry]:
    """Same setting (every non-ignored key) and same seed: one run counted, the newest."""
    by_identity: dict[tuple, list[Entry]] = defaultdict(list)
    for e in members:
        by_identity[(_frozen(e.setting, all_keys), e.run.replicate)].append(e)
    kept = []
    for same in by_identity.values():
        same.sort(key=lambda e: (e.created, str(e.run.run_dir)))
        kept.append(same[-1])
        if len(same) > 1:
            dropped = ", ".join(str(e.run.run_dir) for e in same[:-1])
            notes.append(
                f"{row} / {column}: {len(same)} identical runs with seed {same[-1].run.seed_label} counted once "
                f"(the newest, {same[-1].run.run_dir}; not counted: {dropped})"
            )
    kept.sort(key=lambda e: (e.run.seed_label, str(e.run.run_dir)))
    return kept


def _merge_seed_independent(
    kept: list[Entry], all_keys: list[str], row: str, column: str, notes: list[str]
) -> list[Entry]:
    """Runs of one setting whose seeds changed nothing (every category's every number equal: a
    training-free method, a sorted or listed reference selection) are one measurement, not independent
    replicates: counted once (the first seed), so n and the spread are not overstated. Random reference
    draws are never merged: two that picked the same files (a small pool) are two samples of the
    protocol, as in results.json's mean over draws."""
    by_result: dict[tuple, list[Entry]] = defaultdict(list)
    for e in kept:
        categories = e.payload.get("categories")
        random_draw = _shots(e.setting) > 0 and e.setting.get("protocol.selection", "random") == "random"
        result = (
            json.dumps(categories, sort_keys=True, default=str) if categories and not random_draw else id(e)
        )
        by_result[(_frozen(e.setting, all_keys), e.run.draw is not None, result)].append(e)
    merged = []
    for same in by_result.values():
        merged.append(same[0])
        if len(same) > 1:
            seeds = ", ".join(e.run.seed_label for e in same)
            notes.append(
                f"{row} / {column}: the runs with seeds {seeds} have identical results in every category "
                f"(the seed changes nothing in this setting): counted as one measurement ({same[0].run.run_dir})"
            )
    return merged


def _mixing_warnings(kept: list[Entry], all_keys: list[str], row: str, column: str) -> list[str]:
    """A cell must differ only in its seeds: name any other setting or data difference."""
    out = []
    varying = [
        k for k in all_keys if len({json.dumps(e.setting.get(k, ABSENT), default=str) for e in kept}) > 1
    ]
    if varying:
        shown = "; ".join(
            f"{k}: {', '.join(sorted({_show(e.setting.get(k)) for e in kept}))}" for k in varying[:6]
        )
        more = f" (and {len(varying) - 6} more keys)" if len(varying) > 6 else ""
        out.append(f"{row} / {column} mixes settings, not only seeds: {shown}{more}")
    replicates = [e.run.replicate for e in kept]
    if len(set(replicates)) < len(replicates):
        out.append(f"{row} / {column} counts the same seed more than once (runs with different settings)")
    for field in DATA_FIELDS:
        values = {json.dumps(e.payload.get(field), default=str) for e in kept if field in e.payload}
        if len(values) > 1:
            out.append(f"{row} / {column} mixes different data: {field} = {', '.join(sorted(values))}")
    out += _fingerprint_warnings(kept, row, column)
    return out


def _fingerprint_warnings(kept: list[Entry], row: str, column: str) -> list[str]:
    """Runs of one cell must have seen the same files (the ``data_fingerprint`` each run records): other
    file counts or bytes are other data; other digests are when every run hashed every file's content (a
    digest of sizes and modification times differs between copies of the same files on other machines, so
    it is not compared). The root folder is not compared either (the same data may live elsewhere)."""
    prints = [
        e.payload["data_fingerprint"] for e in kept if isinstance(e.payload.get("data_fingerprint"), dict)
    ]
    if len(prints) < 2:
        return []
    out = []
    for field in ("n_files", "bytes"):
        values = {str(p.get(field)) for p in prints}
        if len(values) > 1:
            out.append(
                f"{row} / {column} mixes different data: data_fingerprint {field} = {', '.join(sorted(values))}"
            )
    if not out and all(p.get("content") == EVERY_FILE_HASHED for p in prints):
        digests = {str(p.get("digest")) for p in prints}
        if len(digests) > 1:
            shown = ", ".join(d[:12] for d in sorted(digests))
            out.append(
                f"{row} / {column} mixes different data: the runs' files differ in content (data_fingerprint "
                f"digests {shown}); rerun them on one copy of the dataset"
            )
    return out
