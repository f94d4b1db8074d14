"""The jobs waiting for a round (bounded in sequences) and those taken from it but not yet answered."""

from __future__ import annotations

import asyncio

from ..errors import LimitExceeded
from .clock import Clock, Deadline
from .round import Job


class WorkQueue:
    """Jobs in arrival order, a None among them asking the batcher to stop. `full` is set whenever a full
    batch (max_batch_size sequences) is queued; `in_hand` holds the jobs taken out and not yet answered.
    While held, nothing is taken out (tests: make batches form deterministically)."""

    def __init__(self, max_queued: int, max_batch_size: int) -> None:
        self.max_queued = max_queued
        self.max_batch_size = max_batch_size
        self.queued = 0  # sequences in the queue
        self.in_hand: set[Job] = set()
        self.full = asyncio.Event()
        self._jobs: asyncio.Queue[Job | None] = asyncio.Queue()
        self._open = asyncio.Event()  # cleared while held
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    @property
    def empty(self) -> bool:
        return self._jobs.empty()

    def make_room(self, sequences: int) -> None:
        """Raise LimitExceeded when `sequences` more would not fit."""
        if self.queued + sequences > self.max_queued:
            raise LimitExceeded("queued sequences", self.queued + sequences, self.max_queued, "max_queued_sequences")

    def put(self, job: Job) -> None:
        self.queued += len(job)
        if self.queued >= self.max_batch_size:
            self.full.set()
        self._jobs.put_nowait(job)

    def put_stop(self) -> None:
        """Ask the batcher to stop once the jobs queued before now have been taken."""
        self._jobs.put_nowait(None)

    async def take(self) -> Job | None:
        """The next job, now in hand (waiting for one, and for a hold to end); None: stop."""
        job = await self._jobs.get()
        await self._open.wait()
        return self._taken(job)

    def _taken(self, job: Job | None) -> Job | None:
        if job is not None:
            self.queued -= len(job)
            self.in_hand.add(job)
        return job

    async def collect(self, first: Job, delay: float, clock: Clock) -> tuple[list[Job], bool]:
        """`first` and the jobs after it up to max_batch_size sequences, waiting up to `delay` seconds on
        `clock` for more while the queue is empty; returns (jobs, stop requested)."""
        jobs, taken = [first], len(first)
        deadline = Deadline(clock, delay)
        while taken < self.max_batch_size:
            if self._jobs.empty():
                if deadline.passed:
                    break
                try:
                    job = self._taken(await deadline.first(self._jobs.get()))
                except TimeoutError:
                    break
            else:
                job = self._taken(self._jobs.get_nowait())
            if job is None:
                return jobs, True
            jobs.append(job)
            taken += len(job)
        return jobs, False

    def answered(self, jobs: list[Job]) -> None:
        """The jobs are answered (or gone): no longer in hand."""
        self.in_hand.difference_update(jobs)

    def drain(self) -> list[Job]:
        """Every job queued or in hand, which the queue then forgets."""
        while not self._jobs.empty():
            self._taken(self._jobs.get_nowait())
        jobs, self.in_hand, self.queued = list(self.in_hand), set(), 0
        return jobs
