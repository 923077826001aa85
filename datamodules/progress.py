"""Progress display shared by every long step (indexing with decode, feature caching, reference banks,
prediction) and by Lightning's training/testing bars.

On a terminal these are ordinary tqdm bars. When the output is not a terminal (SLURM logs, ``| tee``), a
redrawn bar would be written as thousands of carriage-return fragments into one huge line; there each bar
prints whole lines instead: the state at most every :data:`LINE_INTERVAL_S` seconds, and its final state
once. ``TQDM_DISABLE=1`` turns every bar off (tqdm reads it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm import tqdm

T = TypeVar("T")
LINE_INTERVAL_S = 30.0  # without a terminal: at most one line per bar this often (plus its final line)


def _rank() -> int:
    """Only global rank 0 shows progress (the other processes of a DDP job do the same work)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _disabled() -> bool:
    """Another process than global rank 0, or ``TQDM_DISABLE`` set."""
    return _rank() != 0 or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


class _WholeLines:
    """The stream under a line bar: passes whole lines, drops tqdm's bare ``\r`` / ``\n`` writes."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip():
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


class LineTqdm(tqdm):
    """tqdm printing whole lines: at most one every ``line_interval`` seconds (counted from the bar's
    start), and the last state before a reset (e.g. the next epoch) or close always."""

    line_interval: float = LINE_INTERVAL_S
    _line_printed: tuple | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._line_time = time.monotonic()
        super().__init__(*args, **kwargs)

    def _line_state(self) -> tuple:
        return (self.n, self.total, self.desc, self.postfix)

    def _print_line(self) -> None:
        if self.disable:  # a disabled bar (DDP ranks > 0) never set desc, postfix, ...
            return
        state = self._line_state()
        if state == self._line_printed or not self.n:
            return
        self.fp.write(self.__str__().strip() + "\n")
        self.fp.flush()
        self._line_printed, self._line_time = state, time.monotonic()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        # a complete bar is printed by reset/close, once, with what was set last (e.g. the epoch's loss)
        complete = self.total is not None and self.n >= self.total
        if not complete and time.monotonic() - self._line_time >= self.line_interval:
            self._print_line()
        return True

    def reset(self, total: float | None = None) -> None:
        self._print_line()
        super().reset(total)

    def close(self) -> None:
        if not self.disable:
            self._print_line()
        super().close()


def output_is_terminal(stream: Any) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    unit: str = "it",
    file: Any = None,
    line_interval: float | None = None,
) -> Iterator[T]:
    """``for x in progress(items, "encoding"):`` with a bar on stderr (rank 0 only), whole lines when
    stderr is not a terminal."""
    stream = file or sys.stderr
    terminal = output_is_terminal(stream)
    cls = tqdm if terminal else LineTqdm
    bar = cls(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        file=stream if terminal else _WholeLines(stream),
        disable=_disabled(),
        dynamic_ncols=terminal,
        ncols=None,  # a line bar: full width, nothing cut off
        mininterval=0.1 if terminal else 0,
        leave=True,
    )
    if line_interval is not None:
        bar.line_interval = line_interval
    return iter(bar)


class LightningLineTqdm(LineTqdm, Tqdm):
    """Lightning's bar (its number formatting), printing whole lines."""


class LightningLineBar(TQDMProgressBar):
    """Lightning's progress bar printing whole lines, for output that is not a terminal (the bars are
    those of ``TQDMProgressBar.init_*_tqdm``, built with the line display from the start)."""

    def _line_bar(self, desc: str, leave: bool) -> Tqdm:
        return LightningLineTqdm(
            desc=desc,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=leave,
            file=_WholeLines(sys.stdout),
            ncols=None,  # the whole line: nothing of the postfix (losses) cut off
            mininterval=0,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def init_train_tqdm(self) -> Tqdm:
        return self._line_bar(self.train_description, leave=True)

    def init_validation_tqdm(self) -> Tqdm:
        return self._line_bar(self.validation_description, leave=self.trainer.state.fn == "validate")

    def init_test_tqdm(self) -> Tqdm:
        return self._line_bar("Testing", leave=True)

    def init_predict_tqdm(self) -> Tqdm:
        return self._line_bar(self.predict_description, leave=True)


def lightning_progress_bar() -> TQDMProgressBar:
    """Lightning's tqdm bars, as whole lines when stdout (where Lightning draws them) is not a terminal."""
    return TQDMProgressBar() if output_is_terminal(sys.stdout) else LightningLineBar()
