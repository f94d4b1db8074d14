"""How busy a batcher is: its open requests, and whether a request came after an idle spell (a lone caller)
or while others were open or had just finished (load)."""

from __future__ import annotations

import asyncio

from .clock import Clock
from .round import Job


class Activity:
    """Requests open (queued or running) and when the last one finished, on `clock`. A request at least
    `min_idle` seconds after the batcher went idle is a lone caller's, not load."""

    def __init__(self, clock: Clock, min_idle: float) -> None:
        self.clock = clock
        self.min_idle = min_idle
        self.open = 0
        self._idle_since = float("-inf")  # when the last open request finished (never busy yet: always idle)

    def idle_gap(self) -> float:
        """Seconds the batcher had no open request before now (0 while busy)."""
        return 0.0 if self.open else self.clock.now() - self._idle_since

    def opened(self, job: Job) -> None:
        """`job` is open until its future is done."""
        self.open += 1
        job.future.add_done_callback(self._closed)

    def _closed(self, _: asyncio.Future) -> None:
        self.open -= 1
        if self.open == 0:
            self._idle_since = self.clock.now()

    def after_idle_spell(self, job: Job) -> bool:
        """`job` came after an idle spell: a lone caller's, which gains nothing by waiting for others."""
        return job.after_idle >= self.min_idle
