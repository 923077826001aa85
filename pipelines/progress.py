"""Progress of a Lightning loop that stays readable in SLURM logs and other redirected output.

On a terminal Lightning's tqdm bar is used; otherwise :class:`LineProgressBar` prints one whole line per
update (every ``every_percent`` percent and at the end) instead of carriage-return redraws that fill a
log file with thousands of partial lines.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar


class LineProgressBar(ProgressBar):
    """``{description}: 12/40 batches (30%)`` lines on stderr, from global rank 0 only."""

    def __init__(self, every_percent: int = 10) -> None:
        super().__init__()
        self.every_percent = every_percent
        self._enabled = True
        self._last_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _report(self, description: str, done: int, total: float) -> None:
        if not self._enabled:
            return
        if total == float("inf") or total <= 0:
            print(f"{description}: {done} batches", file=sys.stderr, flush=True)
            return
        step = int(100 * done / total) // self.every_percent
        if step != self._last_step or done == total:
            self._last_step = step
            print(
                f"{description}: {done}/{int(total)} batches ({100 * done / total:.0f}%)",
                file=sys.stderr,
                flush=True,
            )

    # Lightning calls batch hooks as (trainer, module, [outputs,] batch, batch_idx[, dataloader_idx]).
    def _start(self, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.has_dataloader_changed(dataloader_idx) or batch_idx == 0:
            self._last_step = -1

    def on_predict_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, *index: int) -> None:
        self._start(*index)

    def on_test_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, *index: int) -> None:
        self._start(*index)

    def on_predict_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, *index: int
    ) -> None:
        self._report(self.predict_description, index[0] + 1, self.total_predict_batches_current_dataloader)

    def on_test_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, *index: int
    ) -> None:
        self._report(self.test_description, index[0] + 1, self.total_test_batches_current_dataloader)


def progress_bar(stream: Any = None) -> ProgressBar:
    """tqdm on a terminal, :class:`LineProgressBar` when the output is redirected."""
    stream = stream if stream is not None else sys.stderr
    return TQDMProgressBar() if getattr(stream, "isatty", lambda: False)() else LineProgressBar()
