"""The evaluation protocol of a job (``protocol.*``, docs/protocols.md): zero-shot (transductive for a
method that declares it: MuSc), or k-shot with seeded reference draws.

- :func:`check_protocol` refuses, from the config alone, a protocol the method does not declare
  (``MethodSpec.protocols``) or keys that do not fit it.
- :func:`reference_plan` draws every target's references for every draw before any model or run folder
  exists (``AnomalyDataModule.reference_draws``: a target without normal training images is refused there).
  Every process of a DDP job draws the same files (the draw depends on seed, draw and category only).
- results.json of a few-shot run holds ``protocol``, one record per draw under ``draws`` (its number, seed,
  per target and category the reference files, and the targets' results of that draw) and, under
  ``targets``, each target's mean over the draws finished so far (:func:`mean_payload`; what results.csv and
  the printed table show). ``zsad report`` counts each finished draw as a replicate, like a seed.
- A preempted run resumes at the draw it was on: finished (draw, target) results stay, provided the run
  folder's results record the same references (:func:`resumed_draws`; another config is refused by
  ``run_folder.refuse_resume_of_another_config``, which treats finished draws like training checkpoints).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.errors import ConfigError, DataChangedError, ZsadError
from lightning_modules.method_spec import FEW_SHOT, TRANSDUCTIVE, ZERO_SHOT

if TYPE_CHECKING:  # light: the CLI's quick commands import this module without torch
    from datamodules.references import ReferenceDraw

RESULTS_FILE = "results.json"


def is_few_shot(protocol: Any) -> bool:
    return int(protocol.shots) > 0


def without_references(method: str | None) -> str:
    """ZERO_SHOT or TRANSDUCTIVE: what ``protocol.shots=0`` is for ``method`` (its spec declares it; a name
    the registry does not know, e.g. in an old run folder, is zero-shot)."""
    from lightning_modules.registry import get_method

    if method is None:
        return ZERO_SHOT
    try:
        return get_method(str(method)).protocol_without_references
    except ZsadError:
        return ZERO_SHOT


def protocol_name(protocol: Any, method: str | None = None) -> str:
    return FEW_SHOT if is_few_shot(protocol) else without_references(method)


def shots_label(shots: int, method: str | None = None) -> str:
    """``zero-shot``, ``transductive`` (a method that scores the test images against each other) or
    ``4-shot``: the protocol as tables and run names show it."""
    if int(shots) > 0:
        return f"{int(shots)}-shot"
    return "transductive" if without_references(method) == TRANSDUCTIVE else "zero-shot"


def protocol_label(protocol: Any, method: str | None = None) -> str:
    """``zero-shot``, ``transductive``, ``4-shot (5 draws)``, ``1-shot (1 draw)``."""
    if not is_few_shot(protocol):
        return shots_label(0, method)
    draws = int(protocol.draws)
    return f"{shots_label(protocol.shots)} ({draws} draw{'s' if draws != 1 else ''})"


def check_protocol(cfg: Any, spec: Any) -> None:
    """What the config alone shows to be wrong about the protocol (before any model, data or run folder)."""
    protocol = cfg.protocol
    if protocol.shots < 0 or protocol.draws < 1:
        raise ConfigError(
            f"protocol.shots must be >= 0 and protocol.draws >= 1, got {protocol.shots} and {protocol.draws}"
        )
    if not is_few_shot(protocol):
        if protocol.draws != 1 or protocol.references:
            what = f"protocol.draws={protocol.draws}" if protocol.draws != 1 else "protocol.references"
            raise ConfigError(f"{what} needs a few-shot protocol: set protocol.shots=K (K > 0)")
        refuse_without_references(spec, "evaluate it few-shot: set protocol.shots=K (K > 0)")
        return
    if not spec.few_shot:
        raise ConfigError(
            f"method '{spec.name}' has no few-shot mode (its protocols: {', '.join(spec.protocols)}); "
            f"evaluate it {shots_label(0, spec.name)} (protocol.shots=0)"
        )
    check_reference_lists(protocol)


def check_reference_lists(protocol: Any) -> None:
    """``protocol.references`` (selection "listed"): one readable list per draw, and only with that selection."""
    lists = list(protocol.references or [])
    if protocol.selection != "listed":
        if lists:
            raise ConfigError(
                "protocol.references names reference lists: set protocol.selection=listed to use them"
            )
        return
    if len(lists) != protocol.draws:
        raise ConfigError(
            f"protocol.selection=listed takes one reference list per draw: protocol.references has {len(lists)} "
            f"file(s) and protocol.draws={protocol.draws}; set protocol.draws={len(lists) or 1} and give "
            "that many lists"
        )
    for path in lists:
        if not Path(path).expanduser().is_file():
            raise ConfigError(
                f"protocol.references: no file {path} (a list of reference images, one per line)"
            )


def reference_lists(protocol: Any) -> list[list[str]] | None:
    """The lines of each draw's reference list (selection "listed"), else None."""
    if protocol.selection != "listed":
        return None
    return [Path(path).expanduser().read_text().splitlines() for path in protocol.references]


def refuse_without_references(spec: Any, what_to_do: str) -> None:
    """A method with no zero-shot (or transductive) mode (AnomalyDINO scores images only against reference
    images) refuses a job that gives it none, in one line."""
    if not spec.runs_without_references:
        raise ConfigError(
            f"method '{spec.name}' has no zero-shot mode (its protocols: {', '.join(spec.protocols)}): it "
            f"scores each image against K normal reference images of its category; {what_to_do}"
        )


def reference_plan(
    cfg: Any, keys: list[str], datamodules: list[Any]
) -> dict[str, list[ReferenceDraw]] | None:
    """Per target key its ``protocol.draws`` reference draws (None: zero-shot); raises ConfigError for a
    target that cannot give them."""
    if not is_few_shot(cfg.protocol):
        return None
    p = cfg.protocol
    listed = reference_lists(p)
    plan = {
        key: datamodule.reference_draws(p.shots, cfg.seed, p.draws, p.selection, listed)
        for key, datamodule in zip(keys, datamodules, strict=True)
    }
    for d in range(p.draws if listed is not None else 0):
        nowhere = set.intersection(*(set(draws[d].unmatched) for draws in plan.values()))
        if nowhere:
            example = sorted(nowhere)[0]
            raise ConfigError(
                f"{p.references[d]}: {len(nowhere)} line(s) name no normal training image of any target, e.g. "
                f"{example} (a path below a target's root, or ending with one)"
            )
    return plan


def skipped_references(plan: dict[str, list[ReferenceDraw]] | None) -> list[str]:
    """One line per (target, category) where drawn training images were test images and were skipped
    (the draws took the next files instead), for the job to say so."""
    lines = []
    for key, draws in (plan or {}).items():
        counts: dict[str, list[int]] = {}
        for draw in draws:
            for category, n in draw.skipped.items():
                if n:
                    counts.setdefault(category, []).append(draw.draw)
        lines += [
            f"zsad: target '{key}', category '{category}': drawn training images that are test images (same "
            f"file or bytes) were skipped in draw(s) {', '.join(map(str, ds))} "
            "(results.json: draws[d].references[target].skipped_test_images)"
            for category, ds in counts.items()
        ]
    return lines


def protocol_header(cfg: Any, plan: dict[str, list[ReferenceDraw]] | None) -> dict[str, Any]:
    """results.json's ``protocol`` and, for a few-shot run, its ``draws`` (references, no results yet)."""
    protocol = cfg.protocol
    header: dict[str, Any] = {
        "protocol": {
            "name": protocol_name(protocol, cfg.method.name),
            "label": protocol_label(protocol, cfg.method.name),
            **({"shots": protocol.shots, "draws": protocol.draws} if plan is not None else {}),
            **(
                {"selection": protocol.selection}
                if plan is not None and protocol.selection != "random"
                else {}
            ),
            **(
                {"references": [str(r) for r in protocol.references]}
                if plan is not None and protocol.selection == "listed"
                else {}
            ),
        }
    }
    if plan is not None:
        header["draws"] = [
            {
                "draw": d,
                "seed": [cfg.seed, d],
                "references": {key: draws[d].record() for key, draws in plan.items()},
                "targets": {},
            }
            for d in range(protocol.draws)
        ]
    return header


def references_config(plan: dict[str, list[ReferenceDraw]]) -> dict[str, Any]:
    """The reference files of every draw for the W&B config: ``references.draw{d}.{target}.{category}``."""
    count = len(next(iter(plan.values()), []))
    return {f"draw{d}": {key: draws[d].files() for key, draws in plan.items()} for d in range(count)}


def resumed_draws(run_dir: Path, header: dict[str, Any]) -> dict[str, Any]:
    """``header`` with the results of the draws a previous session of this run finished (its results.json),
    after checking that they saw the same references; a zero-shot header comes back as it is."""
    path = Path(run_dir) / RESULTS_FILE
    if "draws" not in header or not path.is_file():
        return header
    earlier = json.loads(path.read_text())
    done = [d for d in earlier.get("draws") or [] if d.get("targets")]
    for record in done:
        d = int(record["draw"])
        if d >= len(header["draws"]) or record.get("references") != header["draws"][d]["references"]:
            raise DataChangedError(
                f"{path}: draw {d} was evaluated on other reference images than this config draws now (the "
                "training images changed?); a run never resumes onto other data: use another run_dir"
            )
        header["draws"][d]["targets"] = record["targets"]
    header["targets"] = mean_targets(header["draws"])
    return header


def finished(header: dict[str, Any], draw: int | None, key: str) -> bool:
    """Whether (draw, target) has results already (a resumed run skips it)."""
    return draw is not None and key in header["draws"][draw]["targets"]


def record_result(results: dict[str, Any], draw: int | None, key: str, payload: dict[str, Any]) -> None:
    """Put one evaluated target's results into ``results``: the target's entry (zero-shot), or the draw's,
    with the mean over the finished draws as the target's entry (few-shot)."""
    if draw is None:
        results["targets"][key] = payload
        return
    results["draws"][draw]["targets"][key] = payload
    results["targets"] = mean_targets(results["draws"])


def mean_targets(draws: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target, :func:`mean_payload` of the draws that evaluated it, in the order targets finished."""
    keys = list(dict.fromkeys(key for record in draws for key in record["targets"]))
    return {key: mean_payload([r["targets"][key] for r in draws if key in r["targets"]]) for key in keys}


def mean_payload(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's results over draws: every metric the mean of the draws' values (None where a draw has
    none), ``std`` the sample standard deviation of the draws' category means, ``n_draws``. What is per draw
    and does not average (F1 thresholds, warnings) is left out; the draws' own records keep it."""
    first = payloads[0]
    counts = ("n_normal", "n_anomalous")

    def mean(values: list[Any]) -> float | None:
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        return statistics.fmean(numbers) if numbers and len(numbers) == len(values) else None

    categories = {}
    for category, values in first["categories"].items():
        rows = [p["categories"].get(category, {}) for p in payloads]
        categories[category] = {
            **{k: values[k] for k in counts if k in values},
            **{
                k: mean([r.get(k) for r in rows]) for k, v in values.items() if k not in counts and _metric(v)
            },
        }
    means = {m: mean([p["mean"].get(m) for p in payloads]) for m in first["mean"]}
    spread = {}
    for m, value in means.items():
        spread[m] = (
            statistics.stdev(p["mean"][m] for p in payloads)
            if value is not None and len(payloads) > 1
            else None
        )
    return {**first, "categories": categories, "mean": means, "std": spread, "n_draws": len(payloads)}


def _metric(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def has_finished_draws(run_dir: Path) -> bool:
    """Whether the folder's results.json holds results of a few-shot draw (what a resume keeps)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        results = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return any(d.get("targets") for d in results.get("draws") or [])
