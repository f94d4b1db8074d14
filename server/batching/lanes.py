"""Big calls side by side: a call of many sequences, alone in its round, runs as one part per intra-op thread,
each on the runtime's one-thread session in a lane thread of its own, while the event loop goes on serving."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from ..metrics import ModelMetrics
from ..runtime import ModelRuntime
from .grouping import balanced_parts
from .round import Outcome, Round


class SideBySide:
    """Which rounds run side by side (calls of min_sequences up to max_batch_size; 0: none) and how.
    `lanes`: threads (at least the runtime's threads) that run the parts; None: no round does."""

    def __init__(self, runtime: ModelRuntime, lanes: Executor | None, min_sequences: int, max_batch_size: int,
                 metrics: ModelMetrics) -> None:
        self.runtime = runtime
        self.lanes = lanes
        self.min_sequences = min_sequences if lanes is not None else 0
        self.max_batch_size = max_batch_size
        self.metrics = metrics

    def takes(self, work: Round) -> bool:
        """A big call alone in its round, that fits one batch, on a runtime with a one-thread session."""
        return (0 < self.min_sequences <= len(work.lengths) <= self.max_batch_size and len(work.jobs) == 1
                and self.runtime.one_thread is not None)

    async def run(self, work: Round) -> tuple[list[np.ndarray], list[Outcome]]:
        """Run the round as one part per thread, all at once in the lanes; the parts and their outcomes."""
        assert self.lanes is not None  # takes() said so
        parts = balanced_parts(work.lengths, self.runtime.threads)
        runs = [asyncio.wrap_future(self.lanes.submit(work.run_all, [part], True)) for part in parts]
        outcomes = [outcome for ran in await asyncio.gather(*runs) for outcome in ran]
        self.metrics.side_by_side.inc()
        return parts, outcomes
