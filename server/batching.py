"""Dynamic batching: concurrent sequences for one model version run as one padded onnxruntime batch.

Each sequence is a `WorkItem`. A `Batcher` takes whatever is queued (up to max_batch_size,
waiting up to max_queue_delay_ms for more), drops items whose caller has gone, groups the rest
by length so padding stays small, runs each group in the inference thread pool and hands every
item its own slice of the results. With batching off, each item runs alone through the same
code, so results are identical either way.

Failure stays small: the queue is bounded (max_queued_sequences; more is refused at once with
RESOURCE_EXHAUSTED), a batch that fails at run time is retried one sequence at a time so only the
culprit fails, and if the batcher's loop itself dies, its queued work fails UNAVAILABLE, later work
is refused, and `on_failure` tells the registry (health turns NOT_SERVING for the model).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from seqserve.inference import (
    Batch, SequenceOutputs, length_groups, pad, per_sequence, stack_states, with_probabilities,
)
from server.errors import LimitExceeded, NotReady
from server.metrics import ModelMetrics
from server.runtime import ModelRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How a Batcher forms batches (server flags of the same names)."""

    enabled: bool = True  # off: every sequence runs alone, through the same code
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0  # extra wait for a batch to fill after an idle spell; 0 = take what is queued
    padding_waste: float = 0.5  # split a batch by length when padding exceeds this fraction of real steps
    max_queued: int = 8192  # sequences waiting; beyond it new work is refused (RESOURCE_EXHAUSTED)
    # A lone sequence whose run is expected to take at most this long runs on the event loop (0 = never),
    # skipping two thread hops; the expectation is this model's measured time per padded step x its length.
    inline_max_ms: float = 0.0
    # A request arriving at least this long after the batcher went idle is a lone caller, not load.
    # Measured on loopback (bench/PROFILE.md): a client's own round trip takes longer than 0.2 ms,
    # while the gap between requests of a saturated loop is shorter.
    inline_min_idle_ms: float = 0.2


class Job:
    """The sequences of one request: one future, resolved when the last of them is done."""

    after_idle: float = 0.0  # how long the batcher had been idle when this job arrived

    def __init__(self, count: int) -> None:
        self.future: asyncio.Future[list[SequenceOutputs]] = asyncio.get_running_loop().create_future()
        self.results: list[SequenceOutputs | None] = [None] * count
        self.pending = count

    @property
    def gone(self) -> bool:
        """Answered, failed or cancelled by its caller: nothing more to compute."""
        return self.future.done()

    def deliver(self, index: int, result: SequenceOutputs) -> None:
        self.results[index] = result
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(self.results)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False, slots=True)
class WorkItem:
    steps: np.ndarray  # (T, F) float32
    h0: np.ndarray | None = None  # (L, H) initial state, streaming models
    c0: np.ndarray | None = None  # (L, H)
    job: Job | None = None
    index: int = 0  # position in its job
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def length(self) -> int:
        return self.steps.shape[0]


def batch_of(runtime: ModelRuntime, items: Sequence[WorkItem]) -> Batch:
    """Items as one right-padded batch: x (B, T, F), lengths (B,), h0/c0 (L, B, H) for streaming models."""
    x, lengths = pad([it.steps for it in items], runtime.arch.input_size)  # (B, T, F), (B,)
    if not runtime.arch.streaming:
        return Batch(x, lengths)
    layers, hidden = runtime.arch.num_layers, runtime.arch.hidden_size
    h0 = stack_states([it.h0 for it in items], layers, hidden)  # (L, B, H)
    c0 = stack_states([it.c0 for it in items], layers, hidden) if runtime.arch.has_cell_state else None
    return Batch(x, lengths, h0, c0)


def run_items(runtime: ModelRuntime, items: Sequence[WorkItem]) -> list[SequenceOutputs]:
    """Run items as one padded batch (called in the inference thread pool); each gets its own views."""
    batch = batch_of(runtime, items)
    return per_sequence(with_probabilities(runtime.run(batch)), batch.lengths)


def group_by_length(items: Sequence[WorkItem], max_waste: float) -> list[list[WorkItem]]:
    """Items grouped by the core's one policy (seqserve.inference.length_groups), shortest first."""
    lengths = np.fromiter((it.length for it in items), dtype=np.int64, count=len(items))  # (B,)
    return [[items[i] for i in group.tolist()] for group in length_groups(lengths, max_waste=max_waste)]


class Batcher:
    """Queues work for one model version and runs it in batches, one batch in flight at a time."""

    def __init__(self, runtime: ModelRuntime, executor: Executor, metrics: ModelMetrics, policy: BatchPolicy) -> None:
        self.runtime = runtime
        self.executor = executor
        self.metrics = metrics
        self.max_batch_size = policy.max_batch_size if policy.enabled else 1
        self.max_delay = policy.max_queue_delay_ms / 1000.0 if policy.enabled else 0.0
        self.max_waste = policy.padding_waste
        self.max_queued = policy.max_queued
        self.inline_max = policy.inline_max_ms / 1000.0
        self.inline_min_idle = policy.inline_min_idle_ms / 1000.0
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        self.failure: BaseException | None = None  # why the loop died, once it has
        self._seconds_per_step: float | None = None  # measured run time per padded step (moving average)
        self._queued = 0  # sequences in the queue
        self._in_hand: list[WorkItem] = []  # taken from the queue, not yet answered
        self._open_jobs = 0  # requests queued or running
        self._idle_since = 0.0  # when the last open request finished
        self._queue: asyncio.Queue[WorkItem | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._running = asyncio.Event()  # cleared by hold(): the queue fills, nothing runs
        self._running.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.runtime.name}")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task) -> None:
        """Supervision: a loop that died fails its queued work and reports itself; a stopped one is fine."""
        if task.cancelled() or task.exception() is None:
            return
        self.failure = task.exception()
        log.error("batcher died", extra={"model": self.runtime.name, "version": self.runtime.number,
                                         "error": repr(self.failure)})
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._in_hand.append(item)
        for item in self._in_hand:
            item.job.fail(self._not_ready())
        self._in_hand, self._queued = [], 0
        self.on_failure(self.failure)

    def _not_ready(self) -> NotReady:
        return NotReady(f"model {self.runtime.name!r} version {self.runtime.number} is not ready: its batcher "
                        "stopped after an internal error")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None and not self._task.done():
            await self._queue.put(None)
            await asyncio.wait([self._task])
        self._task = None

    def hold(self) -> None:
        """Stop taking work from the queue until release() (tests: make batches form deterministically)."""
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    @property
    def open_requests(self) -> int:
        """Requests queued or running."""
        return self._open_jobs

    def enqueue(self, items: Sequence[WorkItem]) -> Job:
        """Queue items; the job's future gets their results in order (cancel it to withdraw them).

        Raises NotReady once the loop has died, LimitExceeded when the queue cannot take the items.
        """
        if self.failure is not None:
            raise self._not_ready()
        if self._queued + len(items) > self.max_queued:
            raise LimitExceeded("queued sequences", self._queued + len(items), self.max_queued,
                                "max_queued_sequences")
        self._queued += len(items)
        job = Job(len(items))
        job.after_idle = self._idle_gap()
        self._open_jobs += 1
        job.future.add_done_callback(self._job_done)
        for index, it in enumerate(items):
            it.job, it.index = job, index
            self._queue.put_nowait(it)
        return job

    async def submit(self, items: Sequence[WorkItem]) -> list[SequenceOutputs]:
        """Queue items and wait for their results, in order; cancelling the caller withdraws them."""
        job = self.enqueue(items)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.future.cancel()
            raise

    async def _collect(self, first: WorkItem) -> tuple[list[WorkItem], bool]:
        """Gather up to max_batch_size items (into `_in_hand`); returns (items, stop requested)."""
        items = self._in_hand
        # Waiting for more only pays under load; a request after an idle spell runs at once.
        delay = self.max_delay if first.job.after_idle < self.inline_min_idle else 0.0
        deadline = time.perf_counter() + delay
        while len(items) < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                nxt = self._queue.get_nowait()
            if nxt is None:
                return items, True
            self._queued -= 1
            items.append(nxt)
        return items, False

    def _job_done(self, _: asyncio.Future) -> None:
        self._open_jobs -= 1
        if self._open_jobs == 0:
            self._idle_since = time.perf_counter()

    def _idle_gap(self) -> float:
        """Seconds the batcher had no open request before now (0 while busy)."""
        return 0.0 if self._open_jobs else time.perf_counter() - self._idle_since

    def _runs_inline(self, group: list[WorkItem]) -> bool:
        """A lone caller's short sequence runs on the event loop: no thread hops, nothing to wait for.

        Only after the batcher sat idle: under load the loop must stay free to read the next
        requests (which then gather into batches), and a request that follows the previous one's
        answer within inline_min_idle is load, not a lone caller.
        """
        it = group[0]
        return (len(group) == 1 and self._open_jobs == 1 and it.job.after_idle >= self.inline_min_idle
                and self._seconds_per_step is not None
                and max(1, it.length) * self._seconds_per_step <= self.inline_max)

    async def _run_group(self, group: list[WorkItem]) -> list[SequenceOutputs]:
        started = time.perf_counter()
        if self._runs_inline(group):
            results = run_items(self.runtime, group)
        else:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, run_items, self.runtime, group)
        self._measure(len(group) * max(1, max(it.length for it in group)), time.perf_counter() - started)
        return results

    def _measure(self, padded_steps: int, seconds: float) -> None:
        """Fold one run into the moving average of seconds per padded step."""
        rate = seconds / padded_steps
        previous = self._seconds_per_step
        self._seconds_per_step = rate if previous is None else 0.8 * previous + 0.2 * rate

    async def _run_alone(self, group: list[WorkItem], failure: Exception) -> None:
        """After `group` failed as one batch: run its sequences one by one, so only the culprits fail."""
        if len(group) == 1:
            group[0].job.fail(failure)
            return
        for it in group:
            if it.job.gone:
                continue
            try:
                [result] = await self._run_group([it])
            except Exception as exc:
                it.job.fail(exc)
            else:
                it.job.deliver(it.index, result)

    async def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            await self._running.wait()
            if first is None:
                break
            self._queued -= 1
            self._in_hand = [first]
            items, stopping = await self._collect(first)
            live = [it for it in items if not it.job.gone]  # cancelled callers leave cleanly
            for group in group_by_length(live, self.max_waste):
                started = time.perf_counter()
                waited = [started - it.enqueued_at for it in group]
                try:
                    results = await self._run_group(group)
                except Exception as exc:
                    log.warning("batch failed; retrying its sequences one by one",
                                extra={"model": self.runtime.name, "sequences": len(group), "error": repr(exc)})
                    await self._run_alone(group, exc)
                    continue
                self.metrics.observe_batch(waited, time.perf_counter() - started)
                for it, result in zip(group, results):
                    if not it.job.gone:
                        it.job.deliver(it.index, result)
            self._in_hand = []
