"""``python paused_job.py MARKER FUNCTION ARGS...``: the zsad CLI with ARGS, paused at the first call of
``pipelines.runner.FUNCTION`` (or ``pipelines.MODULE.NAME`` for ``MODULE.NAME``, e.g. ``job.make_loggers``):
it writes MARKER, waits for a signal (``signal.pause``) and then goes on as usual. Tests start it as a
subprocess to send a real stop signal at a point between Trainers."""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path

from pipelines.cli import main

marker, where, *args = sys.argv[1:]
module_name, _, name = where.rpartition(".")
owner = importlib.import_module(f"pipelines.{module_name or 'runner'}")
original = getattr(owner, name)


def paused(*positional, **keywords):
    setattr(owner, name, original)  # the first call only
    Path(marker).write_text("paused\n")
    signal.pause()  # a stop signal's handler raises here (or returns when it only records it)
    return original(*positional, **keywords)


setattr(owner, name, paused)
sys.exit(main(args))
