"""The ``zsad`` command.

    zsad demo                          synthetic source + target, train AnomalyCLIP (tiny CLIP), evaluate
    zsad train CONFIG [k=v ...]        train on the experiment's source
    zsad test CONFIG checkpoint=... [k=v ...]   evaluate on the experiment's targets
    zsad run EXPERIMENT [k=v ...]      train on the source's test split, then evaluate every target
    zsad methods                       registered methods
    zsad experiments                   experiment configs with a one-line description each
    zsad config show CONFIG [k=v ...]  the composed, resolved config (YAML)
    zsad data synth|list|check ...     datasets
    zsad evaluate-maps ...             metrics of saved anomaly maps against a dataset's ground truth
    zsad predict CONFIG --input PATH... --out DIR   maps, scores, masks and overlays for any images

User errors print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datamodules.errors import ConfigError, ZsadError

EXIT_USER_ERROR = 2


def _experiment_command(job: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from pipelines import runner
        from pipelines.config import compose, to_object
        from pipelines.loggers import label_adhoc_run

        composed = compose(args.config, args.overrides)
        label_adhoc_run(composed, args.config, args.overrides)
        outcome = getattr(runner, job)(to_object(composed))
        _report(outcome)
        return 0

    return command


def _report(outcome) -> None:
    """What a job did, from global rank 0 only (under DDP every rank returns from the job)."""
    from pipelines.results import format_table
    from pipelines.run_state import global_rank

    if global_rank() != 0:
        return
    if outcome.skipped:
        print(
            f"skipped: {outcome.run_dir} already holds a finished run of this config; nothing was run "
            "(use another run_dir to run it again)"
        )
    if outcome.results and outcome.results.get("targets"):
        created = outcome.results.get("created")
        print()
        if outcome.skipped:
            print(f"existing results of that run{f' (written {created})' if created else ''}:")
        print(format_table(outcome.results))
        print()
    print(f"run directory: {outcome.run_dir}")
    if outcome.checkpoint:
        print(f"checkpoint:    {outcome.checkpoint}")
    if outcome.results:
        print(f"results:       {outcome.run_dir / 'results.json'} and results.csv")
    for note in outcome.notes:
        print(note)


def _demo(args: argparse.Namespace) -> int:
    """Generate the two synthetic domains (reused when already there) and run configs/experiment/demo.yaml."""
    from datamodules.synthetic import MANIFEST_NAME, generate_synthetic_dataset
    from pipelines import runner
    from pipelines.config import compose, to_object
    from pipelines.loggers import label_adhoc_run

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    composed = compose("demo", overrides)
    label_adhoc_run(composed, "demo", overrides)
    cfg = to_object(composed)
    for data_cfg, style in ((cfg.source, "industrial"), (cfg.targets[0], "vivid")):
        root = Path(data_cfg.root)
        if (root / MANIFEST_NAME).is_file():
            print(f"using synthetic '{style}' data in {root}")
            continue
        summary = generate_synthetic_dataset(root, seed=args.seed, style=style, overwrite=True)
        print(f"wrote synthetic '{style}' data: {summary.n_images} images in {root}")
    _report(runner.run(cfg))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from lightning_modules.registry import get_method, method_names

    for name in method_names():
        spec = get_method(name)
        print(f"{name:14s} {'trains' if spec.trains else 'training-free':14s} needs: {spec.needs}")
        protocols = ", ".join(p.replace("_", "-") for p in spec.protocols)
        print(f"{'':14s} protocols: {protocols}")
        if spec.description:
            print(f"{'':14s} {spec.description}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    """The composed, resolved config exactly as a run would use it (and write to its config.yaml)."""
    from pipelines.config import compose, to_object, to_yaml

    print(to_yaml(to_object(compose(args.config, args.overrides))), end="")
    return 0


def _experiments(args: argparse.Namespace) -> int:
    from pipelines.config import experiment_summaries

    rows = experiment_summaries()
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{name:{width}s}  {description or '(no description)'}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from pipelines import report

    outcome = report.build_report(
        args.inputs,
        out=args.out,
        reference=args.reference,
        wandb_mode=args.wandb_mode,
        project=args.project,
        group_by=args.group_by,
        latex=args.latex,
        bootstrap=args.bootstrap,
        seed=args.seed,
        compare=tuple(args.compare) if args.compare else None,
        baseline=args.baseline,
        layout=args.layout,
        confidence=args.confidence,
    )
    print(outcome.markdown)
    files = [outcome.markdown_path, outcome.csv_path, outcome.html_path]
    if outcome.latex_path is not None:
        files.append(outcome.latex_path)
    print(f"report: {', '.join(map(str, files))} ({outcome.n_runs} runs)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pipelines import sweep

    cfg, source = sweep.load_sweep(args.sweep)
    if args.sweep_command == "plan":
        runs = sweep.expand(cfg)
        invalid = dict((run.id, error) for run, error in sweep.invalid_runs(cfg, runs))
        print(f"sweep '{cfg.name}': {len(runs)} runs in {sweep.sweep_dir(cfg)}")
        for index, run in enumerate(runs):
            settings = " ".join(o for o in run.overrides if not o.startswith("run_dir="))
            print(f"{index:4d}  {run.id}  {run.experiment}  {settings}")
            if run.id in invalid:
                print(f"      invalid: {invalid[run.id]}")
        if invalid:
            raise ConfigError(
                f"sweep '{cfg.name}': {len(invalid)} of {len(runs)} runs are invalid (listed above)"
            )
        return 0
    if args.sweep_command == "status":
        rows = sweep.status(cfg)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
            print(f"{row['index']:4d}  {row['state']:11s} {row['job'] or '-':12s} {row['id']}")
            if row["error"]:
                where = f"  ({row['error_file']})" if row["error_file"] else ""
                print(f"      {row['error']}{where}")
        print(f"sweep '{cfg.name}': " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
        return 0
    if args.sweep_command == "submit":
        result = sweep.submit(cfg, source, dry_run=args.dry_run)
        for run_id, owner in result["busy"].items():
            print(f"not submitted again: {run_id} (queued or running: {owner})")
        if not result["to_run"]:
            print(f"all {result['runs']} runs of '{cfg.name}' are finished; nothing to submit")
        elif args.dry_run:
            print(f"{len(result['to_run'])} of {result['runs']} runs to submit; script: {result['script']}")
        else:
            print(
                f"submitted job {result['job_id']}: {len(result['to_run'])} of {result['runs']} runs ({result['script']})"
            )
        return 0
    if args.sweep_command == "run":
        if not args.local:
            raise ZsadError(
                "`zsad sweep run` executes the manifest on this machine: add --local (or use `zsad sweep submit`)"
            )
        outcome = sweep.run_local(cfg, source)
        for run_id, state in outcome.items():
            print(f"{state:20s} {run_id}")
        return 1 if any(state.startswith("failed") for state in outcome.values()) else 0
    raise AssertionError(args.sweep_command)


def _sweep_task(args: argparse.Namespace) -> int:
    """One SLURM array task (or any manifest entry): run entry --index of the manifest."""
    from pipelines import sweep

    name, runs = sweep.read_manifest(Path(args.manifest))
    if not 0 <= args.index < len(runs):
        raise ZsadError(f"index {args.index} outside the manifest's {len(runs)} runs")
    outcome = sweep.run_entry(name, runs[args.index], args.overrides)
    from pipelines.run_state import global_rank

    if global_rank() == 0:  # under DDP every rank of the task returns here
        print(
            f"run {runs[args.index].id}: {'already finished' if outcome.skipped else 'finished'} ({outcome.run_dir})"
        )
    return 0


# --- subcommands that live with their feature ---------------------------------------------------------
# Their modules import what the work needs (numpy, torch, Lightning): they are imported plainly (an
# ImportError is an error, never a missing subcommand), but only for the subcommand that runs, so that
# `zsad --help`, `zsad methods` or `zsad data list` do not wait for them (docs/performance.md).
Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _synth() -> Command:
    from datamodules import synthetic

    return synthetic.add_arguments, synthetic.run


def _predict() -> Command:
    from pipelines import predict

    return predict.add_arguments, predict.run


def _evaluate_maps() -> Command:
    from pipelines import evaluate_maps

    return evaluate_maps.add_arguments, evaluate_maps.run


def _add_command(
    sub: Any, name: str, text: str, command: Callable[[], Command], build: bool, **kwargs: Any
) -> None:
    """Subcommand ``name`` with its help; its arguments and function only when ``build``."""
    parser = sub.add_parser(name, help=text, **kwargs)
    if build:
        add_arguments, run_command = command()
        add_arguments(parser)
        parser.set_defaults(func=run_command)


def build_parser(command: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``zsad`` parser. ``command`` (the words of the command line, e.g. ``["data", "synth"]``): only
    that subcommand gets the arguments defined by its feature module (what :func:`main` builds); None: all."""

    def builds(*words: str) -> bool:
        return command is None or [w for w in command if not w.startswith("-")][: len(words)] == list(words)

    parser = argparse.ArgumentParser(prog="zsad", description="Zero-shot anomaly detection experiments.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    for job, text in (
        ("train", "train the method of CONFIG on its source dataset"),
        ("test", "evaluate on the targets of CONFIG (trained methods need checkpoint=...)"),
        ("run", "train on the source's test split, then evaluate on every target"),
    ):
        p = sub.add_parser(job, help=text, description=text)
        p.add_argument("config", help="experiment config: a name under configs/experiment/ or a .yaml path")
        p.add_argument(
            "overrides", nargs="*", help="key=value overrides, e.g. trainer.max_epochs=3 method=anomalyclip"
        )
        p.set_defaults(func=_experiment_command(job))

    demo = sub.add_parser("demo", help="the end-to-end demo on synthetic data (tiny CLIP, CPU, minutes)")
    demo.add_argument("--out", help="output folder (default: runs)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic datasets")
    demo.add_argument("overrides", nargs="*", help="key=value overrides of configs/experiment/demo.yaml")
    demo.set_defaults(func=_demo)

    sweep_parser = sub.add_parser("sweep", help="grids of runs: plan, submit to SLURM, status, run locally")
    sweep_sub = sweep_parser.add_subparsers(dest="sweep_command", required=True)
    for name, text in (
        ("plan", "list the runs of a sweep and validate their configs"),
        ("submit", "submit the unfinished runs as a SLURM array job"),
        ("status", "pending / queued / running / preempted / interrupted / finished / failed per run"),
        ("run", "execute the unfinished runs here (--local)"),
    ):
        p = sweep_sub.add_parser(name, help=text)
        p.add_argument("sweep", help="sweep YAML: a path or a name under configs/sweep/")
        if name == "submit":
            p.add_argument(
                "--dry-run", action="store_true", help="write the sbatch script without submitting"
            )
        if name == "run":
            p.add_argument("--local", action="store_true", help="run on this machine, one run after another")
        p.set_defaults(func=_sweep)
    task = sweep_sub.add_parser("run-task", help="run one manifest entry (what each SLURM array task calls)")
    task.add_argument("manifest")
    task.add_argument("--index", type=int, required=True)
    task.add_argument(
        "overrides", nargs="*", help="extra key=value overrides (the sbatch script passes trainer ones)"
    )
    task.set_defaults(func=_sweep_task)

    report = sub.add_parser(
        "report",
        help="paper-style tables from a sweep or run folders",
        description="One column per setting (each run's config minus seed and keys that do not change "
        "results), mean±std over seeds; see docs/reports.md.",
    )
    report.add_argument("inputs", nargs="+", help="sweep YAML files, run folders, or folders containing runs")
    report.add_argument(
        "--out",
        help="folder for report.md, report.csv and report.html (default: the sweep folder or ./report)",
    )
    report.add_argument(
        "--reference",
        action="store_true",
        help="add each method's published numbers as rows (its paper's; AUPRO compared as the papers' cflow-style)",
    )
    report.add_argument(
        "--group-by",
        nargs="+",
        metavar="KEY",
        help="group by these config keys only (e.g. method.name source.name); cells that then mix other "
        "settings are flagged",
    )
    report.add_argument(
        "--latex",
        action="store_true",
        help="also write report.tex: booktabs tables in the papers' layout, best bold, second underlined",
    )
    report.add_argument(
        "--bootstrap",
        type=int,
        metavar="N",
        help="add percentile intervals (95%%, or --confidence) per cell from N resamples of each category's test images (stratified "
        "by label; every metric recomputed exactly from the maps the runs saved with eval.save_maps=true)",
    )
    report.add_argument("--seed", type=int, default=0, help="seed of the --bootstrap draws (default 0)")
    report.add_argument(
        "--confidence",
        type=float,
        metavar="LEVEL",
        help="level of the --bootstrap and --compare intervals, a fraction (default 0.95: the 2.5th and 97.5th "
        "percentiles)",
    )
    report.add_argument(
        "--layout",
        default="anomalyclip",
        choices=["anomalyclip", "adaptclip", "full"],
        help="the tables' metrics: anomalyclip (image AUROC, AP; pixel AUROC, AUPRO), adaptclip (image AUROC; "
        "pixel AUPR first, AUROC), full (image AUROC, AP, F1-max; pixel AUROC, AP, AUPR, AUPRO)",
    )
    report.add_argument(
        "--compare",
        nargs=2,
        metavar=("SETTING_A", "SETTING_B"),
        help="the paired difference A - B per dataset on the same test images, its interval and bootstrap "
        "p-value (settings by their column label or a unique part of it; --bootstrap N resamples, default 1000)",
    )
    report.add_argument(
        "--baseline",
        metavar="RUN_OR_EXPERIMENT",
        help="follow every number with its difference to this setting's (a run folder, or an experiment "
        "name whose runs share one setting, e.g. cmg_baseline for the CMG ablation)",
    )
    report.add_argument(
        "--wandb-mode",
        default="offline",
        choices=["offline", "online", "disabled"],
        help="log the tables to W&B",
    )
    report.add_argument("--project", default="zsad", help="W&B project for the report tables")
    report.set_defaults(func=_report_command)

    methods = sub.add_parser("methods", help="list the registered methods")
    methods.set_defaults(func=_methods)

    experiments = sub.add_parser("experiments", help="list the experiment configs with their descriptions")
    experiments.set_defaults(func=_experiments)
    config_parser = sub.add_parser("config", help="inspect configs")
    config_sub = config_parser.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show", help="print the composed, resolved config of CONFIG with overrides (YAML), as a run uses it"
    )
    show.add_argument("config", help="experiment config: a name under configs/experiment/ or a .yaml path")
    show.add_argument("overrides", nargs="*", help="key=value overrides, as for zsad run")
    show.set_defaults(func=_config_show)

    data = sub.add_parser("data", help="datasets: generate synthetic data, list and check benchmarks")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    text = "write a synthetic dataset in the MVTec AD layout"
    _add_command(data_sub, "synth", text, _synth, builds("data", "synth"))
    from datamodules import cli as data_cli  # light: images are opened inside `check` only

    for name, add_arguments, run_command, text in (
        (
            "list",
            data_cli.add_list_arguments,
            data_cli.run_list,
            "the supported benchmarks and their expected counts",
        ),
        ("check", data_cli.add_check_arguments, data_cli.run_check, "index and validate a dataset root"),
    ):
        p = data_sub.add_parser(name, help=text)
        add_arguments(p)
        p.set_defaults(func=run_command)

    text = "anomaly maps, scores, masks and overlays for any images (files, folders, globs)"
    _add_command(sub, "predict", text, _predict, builds("predict"), description=text)
    text = "evaluate saved anomaly maps against a dataset's ground truth"
    _add_command(sub, "evaluate-maps", text, _evaluate_maps, builds("evaluate-maps"))
    return parser


def user_message(error: BaseException) -> str:
    """One line. Errors re-raised from DataLoader workers carry the worker's traceback: keep its last line."""
    text = str(error).strip()
    if "Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from pipelines.stop_signals import TrainingInterrupted

    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as error:  # saved; status.json says interrupted or preempted
        print(f"zsad: {error}", file=sys.stderr)
        return error.exit_code
    except ZsadError as error:
        if args.debug:
            raise
        print(f"zsad: error: {user_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:  # a full disk or quota anywhere (loggers, checkpoints): one line, no traceback
        if args.debug or error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from datamodules.atomic_io import write_error

        where = Path(error.filename) if error.filename else Path.cwd() / "?"
        print(f"zsad: error: {write_error(where, error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("zsad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
