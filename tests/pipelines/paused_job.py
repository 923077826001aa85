"""``python paused_job.py MARKER FUNCTION ARGS...``: the zsad CLI with ARGS, paused at the first call of
``pipelines.runner.FUNCTION``: it writes MARKER, waits for a signal (``signal.pause``) and then goes on as
usual. Tests start it as a subprocess to send a real stop signal at a point between Trainers."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from pipelines import runner
from pipelines.cli import main

marker, name, *args = sys.argv[1:]
original = getattr(runner, name)


def paused(*positional, **keywords):
    setattr(runner, name, original)  # the first call only
    Path(marker).write_text("paused\n")
    signal.pause()  # a stop signal's handler raises here (or returns when it only records it)
    return original(*positional, **keywords)


setattr(runner, name, paused)
sys.exit(main(args))
