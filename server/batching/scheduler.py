"""The Batcher: queues one model version's work and runs it in rounds, up to `concurrent_batches` at once, a
lone caller's short sequence inline and a big call side by side; it supervises its own loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from seqserve.inference import Packed, PackedOutputs

from ..errors import NotReady
from ..metrics import ModelMetrics
from ..runtime import ModelRuntime
from .activity import Activity
from .clock import Clock, MonotonicClock
from .inline import InlinePath
from .lanes import SideBySide
from .policy import BatchPolicy, runs_at_once
from .queue import WorkQueue
from .retry import run_one_by_one
from .round import Job, Outcome, Round

log = logging.getLogger(__name__)


class Batcher:
    """Queues work for one model version and runs it in batches, up to the policy's runs at once.

    `lanes`: threads (at least the runtime's threads) that run a big call's parts side by side
    (policy.parallel_call_min); None: such calls run as any other round. `clock`: time for the queue delay,
    idle spells, waits and run times (default: the real one)."""

    def __init__(self, runtime: ModelRuntime, executor: Executor, metrics: ModelMetrics, policy: BatchPolicy,
                 lanes: Executor | None = None, clock: Clock | None = None) -> None:
        self.runtime = runtime
        self.executor = executor
        self.metrics = metrics
        self.clock = clock or MonotonicClock()
        self.max_batch_size = policy.max_batch_size if policy.enabled else 1
        self.max_delay = policy.max_queue_delay_ms / 1000.0 if policy.enabled else 0.0
        self.max_waste = policy.padding_waste
        self.min_split = policy.padding_min_split
        self.concurrent_batches = runs_at_once(policy.concurrent_batches, runtime.threads)
        self.queue = WorkQueue(policy.max_queued, self.max_batch_size)
        self.activity = Activity(self.clock, policy.inline_min_idle_ms / 1000.0)
        self.inline = InlinePath(policy.inline_max_ms / 1000.0, self.activity, self.queue)
        self.side_by_side = SideBySide(runtime, lanes, policy.parallel_call_min, self.max_batch_size, metrics)
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        self.failure: BaseException | None = None  # why the loop died, once it has
        self._task: asyncio.Task | None = None

    # --- life cycle and supervision ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.runtime.name}")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task) -> None:
        """Supervision: a loop that died fails its queued work and reports itself; a stopped one is fine."""
        failure = None if task.cancelled() else task.exception()
        if failure is None:
            return
        self.failure = failure
        log.error("batcher died", extra={"model": self.runtime.name, "version": self.runtime.number,
                                         "error": repr(failure)})
        for job in self.queue.drain():
            job.fail(self._not_ready())
        self.on_failure(failure)

    def _not_ready(self) -> NotReady:
        return NotReady(f"model {self.runtime.name!r} version {self.runtime.number} is not ready: its batcher "
                        "stopped after an internal error")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None and not self._task.done():
            self.queue.put_stop()
            await asyncio.wait([self._task])
        self._task = None

    def hold(self) -> None:
        """Stop taking work from the queue until release() (tests: make batches form deterministically)."""
        self.queue.hold()

    def release(self) -> None:
        self.queue.release()

    # --- requests -----------------------------------------------------------------------------------------

    @property
    def open_requests(self) -> int:
        """Requests queued or running."""
        return self.activity.open

    def enqueue(self, sequences: Packed, fetch: frozenset[str] | None = None) -> Job:
        """Queue a request's sequences; the job's future gets their answers (cancel it to withdraw them),
        at least the model outputs named in `fetch` (None: all, and "logits" always).

        Raises NotReady once the loop has died, LimitExceeded when the queue cannot take the sequences.
        """
        if self.failure is not None:
            raise self._not_ready()
        self.queue.make_room(len(sequences))
        job = Job(sequences, fetch, self.clock.now(), after_idle=self.activity.idle_gap())
        self.activity.opened(job)
        if self.inline.admits(job):
            # Decided once the requests that arrived with this one have been read: still alone, or queued.
            asyncio.get_running_loop().call_soon(self._now_or_queued, job)
        else:
            self.queue.put(job)
        return job

    async def submit(self, sequences: Packed, fetch: frozenset[str] | None = None) -> PackedOutputs:
        """Queue sequences and wait for their answers; cancelling the caller withdraws them."""
        job = self.enqueue(sequences, fetch)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.future.cancel()
            raise

    def _now_or_queued(self, job: Job) -> None:
        if job.gone:
            return
        if self.inline.alone():
            self._run_now(job)
        else:
            self.queue.put(job)

    def _run_now(self, job: Job) -> None:
        """The inline path: the job's one sequence runs here, in the event loop's thread."""
        work, group = Round(self.runtime, [job], self.clock), np.zeros(1, dtype=np.int64)
        self._started(work)
        [outcome] = work.run_all([group])
        if isinstance(outcome, Exception):
            job.fail(outcome)
            return
        self._observe(work, group, outcome)
        self._answer(work, group)

    # --- rounds -------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        """Take what is queued whenever a batch slot is free, and run it as a round beside the others."""
        running: set[asyncio.Task] = set()
        stopping = False
        while not stopping:
            while len(running) >= self.concurrent_batches:
                await self._reap(running, asyncio.FIRST_COMPLETED)
            while running and self.queue.queued < self.max_batch_size:
                await self._next_slot(running)
            first = await self.queue.take()
            if first is None:
                break
            jobs, stopping = await self._collect(first)
            live = [job for job in jobs if not job.gone]  # cancelled callers leave cleanly
            self.queue.answered([job for job in jobs if job.gone])
            if not live:
                continue
            if self.concurrent_batches == 1:
                await self._run_round(Round(self.runtime, live, self.clock))  # one slot: no task to schedule
            else:
                running.add(asyncio.create_task(self._run_round(Round(self.runtime, live, self.clock))))
        await self._reap(running, asyncio.ALL_COMPLETED)

    async def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """A round's jobs, led by `first`, each in hand; returns (jobs, stop requested). Under load the round
        waits up to max_queue_delay for more; a request after an idle spell gains nothing by waiting."""
        delay = 0.0 if self.activity.after_idle_spell(first) else self.max_delay
        return await self.queue.collect(first, delay, self.clock)

    async def _next_slot(self, running: set[asyncio.Task]) -> None:
        """Wait until a round ends or a full batch is queued: only a full batch starts beside a running
        round, smaller ones wait and gather more (side by side, two small runs cost more than one)."""
        self.queue.full.clear()
        full = asyncio.ensure_future(self.queue.full.wait())
        try:
            done, _ = await asyncio.wait(running | {full}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            full.cancel()
        self._reaped(running, done - {full})

    async def _reap(self, running: set[asyncio.Task], when: str) -> None:
        """Wait for rounds to end (the first, or all)."""
        if running:
            done, _ = await asyncio.wait(running, return_when=when)
            self._reaped(running, done)

    @staticmethod
    def _reaped(running: set[asyncio.Task], done: set[asyncio.Task]) -> None:
        """Forget rounds that ended; one that died re-raises here, and so ends the loop."""
        running.difference_update(done)
        for task in done:
            task.result()

    async def _run_round(self, work: Round) -> None:
        try:
            await self._run_groups(work)
        except BaseException:
            for job in work.jobs:  # never left waiting, whatever went wrong
                job.fail(self._not_ready())
            raise
        finally:
            self.queue.answered(work.jobs)

    async def _run_groups(self, work: Round) -> None:
        self._started(work)
        if self.side_by_side.takes(work):
            groups, outcomes = await self.side_by_side.run(work)
        else:
            groups = work.groups(self.max_batch_size, self.max_waste, self.min_split)
            outcomes = await self._run(work, groups)
        for group, outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("batch failed; retrying its sequences one by one",
                            extra={"model": self.runtime.name, "sequences": len(group), "error": repr(outcome)})
                await run_one_by_one(work, group, outcome, self._run)
            else:
                self._observe(work, group, outcome)
            self._answer(work, group)

    async def _run(self, work: Round, groups: list[np.ndarray]) -> list[Outcome]:
        """Run groups in one trip to the inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work.run_all, groups)

    # --- bookkeeping ----------------------------------------------------------------------------------------

    def _started(self, work: Round) -> None:
        """A round starts: its requests' waits into the metrics."""
        self.metrics.observe_waits(self.clock.now(), (job.enqueued_at for job in work.jobs))

    def _observe(self, work: Round, group: np.ndarray, seconds: float) -> None:
        """Metrics of a group that ran, and its time per padded step for the next inline decision."""
        self.metrics.observe_batch(len(group), seconds)
        self.inline.measure(len(group) * max(1, int(work.lengths[group].max())), seconds)

    def _answer(self, work: Round, group: np.ndarray) -> None:
        """Hand every job whose last sequence was in `group` its answers."""
        for j in work.finished(group):
            work.jobs[j].deliver(work.answers_of(j))
