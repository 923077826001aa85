"""How long the looking-around commands take before they answer, against ``python -c "import torch"``.

    python benchmarks/cli_startup.py              # 5 rounds, the median of each command
    python benchmarks/cli_startup.py --rounds 9
    python benchmarks/cli_startup.py --compare ../zsad-before   # also another checkout, in the same rounds

Each round runs, in fresh interpreters and in an interleaved order (so that a load change on the machine
hits every command alike): ``python -c "import torch"``, ``python -c "pass"`` (the interpreter alone)
and ``zsad --help``, ``zsad methods``, ``zsad experiments``, ``zsad data list``, ``zsad config show demo``
(``python -m pipelines.cli ...``, output discarded; with ``--compare DIR`` the same commands of the
checkout DIR too, e.g. one from before a change). Printed: the median wall time of each and its ratio to
the median ``import torch``. These commands import neither torch, Lightning nor open_clip
(tests/pipelines/test_cli.py checks it); a job imports them when it starts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = {"python -c 'import torch'": ["-c", "import torch"], "python -c 'pass'": ["-c", "pass"]}
COMMANDS = {
    "zsad --help": ["--help"],
    "zsad methods": ["methods"],
    "zsad experiments": ["experiments"],
    "zsad data list": ["data", "list"],
    "zsad config show demo": ["config", "show", "demo"],
}


def wall_time(arguments: list[str], root: Path = ROOT) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *arguments], cwd=root, env=env, stdout=subprocess.DEVNULL, check=True, timeout=600
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--compare", type=Path, metavar="DIR", help="another checkout whose commands to time too"
    )
    args = parser.parse_args()
    runs = {name: (words, ROOT) for name, words in BASELINES.items()}
    for root, suffix in ((ROOT, ""), *(((args.compare, f" ({args.compare.name})"),) if args.compare else ())):
        runs |= {
            f"{name}{suffix}": (["-m", "pipelines.cli", *words], root) for name, words in COMMANDS.items()
        }
    times: dict[str, list[float]] = {name: [] for name in runs}
    wall_time(BASELINES["python -c 'import torch'"])  # warm the file cache once, not counted
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name].append(wall_time(*runs[name]))
    torch_s = statistics.median(times["python -c 'import torch'"])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}; "
        f"median of {args.rounds} rounds"
    )
    width = max(map(len, times))
    print(f"{'command':{width}s} {'seconds':>8s} {'/ import torch':>15s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:{width}s} {median:8.2f} {median / torch_s:15.2f}")


if __name__ == "__main__":
    main()
