"""Categories finished early: a category's pixel metrics and curves computed, and its pixels freed, as soon
as all its samples have arrived, so an evaluation holds only the categories in progress rather than the
dataset. In one process in any order; under DDP in ascending order, each category gathered from all
processes (:func:`~.distributed.gather_category`) and scored by one of them.

A mixin of :class:`~.evaluator.AnomalyEvaluator`, which owns the states and provides what this reads:
``categories``, ``samples_per_category``, ``expected_samples``, ``process_group``, ``while_waiting``, the
bookkeeping it sets up in ``__init__``/``reset`` (``_seen``, ``_finished``, ``_finished_curves``,
``_next_in_order``, ``_scored_elsewhere``, ``_shared_upto``, ``scored_here``), the state names
(``_image_state_names``, ``_PIXEL_STATES``, ``_REGION_STATES``, ``_state_dtypes``), the state readers
``_cat`` / ``_pixel_chunks`` and the scoring of one category, ``_category_results``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from lightning_modules.metrics._arrays import return_freed_memory
from lightning_modules.metrics.distributed import gather_category


class EarlyFinishing:
    """Finishing categories during the epoch (see the module docstring)."""

    @staticmethod
    def _distributed() -> bool:
        return (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        )

    def _finish_complete_categories(self, category_ids: Tensor, sample_ids: Tensor) -> None:
        """Compute and free the pixel states of every category whose samples have all arrived: in any
        order in one process, in ascending order and gathered from all processes under DDP."""
        if self.samples_per_category is None:
            return
        distributed = self._distributed()
        if distributed and self.expected_samples is None:
            return  # the end-of-epoch gather
        for ci, sid in zip(category_ids.tolist(), sample_ids.tolist(), strict=True):
            seen = self._seen.setdefault(ci, set())
            if not distributed and ci in self._finished and sid not in seen:
                raise ValueError(
                    f"category {self.categories[ci]!r} received sample {sid} after all of its "
                    f"{self.samples_per_category[ci]} samples (samples_per_category is wrong)"
                )
            if not distributed or sid in self.expected_samples[ci]:  # not a padding duplicate
                seen.add(sid)
        if distributed:
            self._finish_in_order()
            return
        for ci in sorted(set(category_ids.tolist())):
            if ci not in self._finished and len(self._seen[ci]) >= self.samples_per_category[ci]:
                self._finish_category(ci)

    def _finish_in_order(self) -> None:
        """Finish the next categories whose samples this process expects have all arrived (every process
        issues the same gathers in the same order); raises on every process alike when one is incomplete.
        Each category is scored by one process, category id modulo the number of processes (any would
        compute the same numbers from the same gathered states): the metric work is shared, not repeated;
        :meth:`_share_scored` hands everyone the results."""
        while self._next_in_order < len(self.categories):
            ci = self._next_in_order
            if len(self._seen.get(ci, ())) < len(self.expected_samples[ci]):
                return
            rows = self._cat("img_category") == ci
            local = {name: self._cat(name)[rows] for name in self._image_state_names}
            pixels = self._category_chunks(ci)
            local.update({name: self._cat_chunks(name, pixels) for name in self._PIXEL_STATES})
            region_rows = self._category_chunks(ci, "reg_category")
            local.update({name: self._cat_chunks(name, region_rows) for name in self._REGION_STATES})
            with self._states_replaced(
                gather_category(ci, local, self.device, self.process_group, self.while_waiting)
            ):
                arrived = int(torch.unique(self._cat("img_sample")).numel())
                if arrived != self.samples_per_category[ci]:
                    raise ValueError(
                        f"category {self.categories[ci]!r}: {arrived} of its {self.samples_per_category[ci]} "
                        "samples arrived on all processes together (samples_per_category or "
                        "expected_samples is wrong)"
                    )
                group = self.process_group
                if ci % torch.distributed.get_world_size(group) == torch.distributed.get_rank(group):
                    self._finish_category(ci, drop=False)
                else:
                    self._scored_elsewhere.add(ci)
            self._drop_pixel_chunks(pixels)
            self._drop_pixel_chunks(region_rows, self._REGION_STATES)
            self._next_in_order += 1

    def _share_scored(self) -> None:
        """Give every process the results and curves of every category finished so far, each from the
        process that scored it (one ``all_gather_object``; every process calls this from :meth:`compute`
        and :meth:`curves`, after finishing the same categories)."""
        if not self._distributed() or self._shared_upto == self._next_in_order:
            return
        done = range(self._shared_upto, self._next_in_order)
        mine = {
            ci: (self._finished[ci], self._finished_curves.get(ci)) for ci in done if ci in self._finished
        }
        everyone: list[Any] = [None] * torch.distributed.get_world_size(self.process_group)
        torch.distributed.all_gather_object(everyone, mine, group=self.process_group)
        for scored in everyone:
            for ci, (results, curves) in scored.items():
                self._finished[ci] = results
                if curves is not None:
                    self._finished_curves[ci] = curves
        self._scored_elsewhere.clear()
        self._shared_upto = self._next_in_order

    def _finish_category(self, ci: int, drop: bool = True) -> None:
        self._finished[ci], curves = self._category_results(ci)
        self.scored_here += 1
        if curves is not None:
            self._finished_curves[ci] = curves
        if drop:
            self._drop_pixel_chunks(self._category_chunks(ci))
            self._drop_pixel_chunks(self._category_chunks(ci, "reg_category"), self._REGION_STATES)

    def _category_chunks(self, ci: int, key: str = "pix_category") -> list[int]:
        """Positions of category ``ci``'s stored pixel (or region) chunks (one category per chunk)."""
        return [i for i, chunk in enumerate(self._pixel_chunks(key)) if chunk.numel() and int(chunk[0]) == ci]

    def _cat_chunks(self, name: str, positions: list[int]) -> Tensor:
        chunks = self._pixel_chunks(name)
        if not positions:
            return torch.empty(0, dtype=self._state_dtypes[name], device=self.device)
        return torch.cat([chunks[i] for i in positions])

    def _drop_pixel_chunks(self, positions: list[int], names: tuple[str, ...] | None = None) -> None:
        for name in names or self._PIXEL_STATES:
            chunks = self._pixel_chunks(name)
            setattr(self, name, [c for i, c in enumerate(chunks) if i not in positions])
        return_freed_memory()  # or the process's RSS grows with every category scored

    @contextmanager
    def _states_replaced(self, states: dict[str, Tensor]) -> Iterator[None]:
        """Compute from ``states`` (one category's, gathered) instead of this process's own states."""
        own = {name: getattr(self, name) for name in states}
        for name, value in states.items():
            setattr(self, name, [value])
        try:
            yield
        finally:
            for name, value in own.items():
                setattr(self, name, value)
