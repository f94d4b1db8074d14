"""Dynamic batching: concurrent requests for one model version run as padded onnxruntime batches.

Each request's sequences arrive packed end to end (`Packed`) as one `Job`. A `Batcher` takes the
jobs that are queued (up to max_batch_size sequences, waiting up to max_queue_delay_ms for more),
drops jobs whose caller has gone, and runs their sequences as a `Round`: grouped by length so
padding stays small, the groups run one after the other in one trip to the inference thread, each
padded with one gather and its outputs scattered into the round's packed answer arrays with one
index assignment per output. Every job is answered with views into those arrays. Nothing loops over
sequences in Python. With batching off, each sequence runs alone through the same code, so results
are identical either way. A big call alone in its round runs side by side instead: one part per
intra-op thread, cut by length, each on a one-thread session in a thread of its own, while the event
loop goes on serving.

Failure stays small: the queue is bounded (max_queued_sequences; more is refused at once with
RESOURCE_EXHAUSTED), a batch that fails at run time is retried one sequence at a time so only the
culprit's request fails, and if the batcher's loop itself dies, its queued work fails UNAVAILABLE,
later work is refused, and `on_failure` tells the registry (health turns NOT_SERVING for the model).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from seqserve.inference import PER_STATE, PER_STEP, Batch, Packed, PackedOutputs, length_groups, with_probabilities
from seqserve.numerics import pad_rows, step_rows

from .errors import LimitExceeded, NotReady
from .metrics import ModelMetrics
from .runtime import ModelRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How a Batcher forms batches (server flags of the same names)."""

    enabled: bool = True  # off: every sequence runs alone, through the same code
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0  # under load, extra wait for a batch to fill (see _collect); 0 = take what is queued
    # Split a batch by length where padding would exceed this fraction of its real steps, but never cut off
    # fewer than padding_min_split sequences. Measured on JapaneseVowels, onnxruntime in-process: random
    # 64-sequence batches ran 1.3x faster in ~3 groups than padded as one; at 8 and 20, splitting gained nothing.
    padding_waste: float = 0.25
    padding_min_split: int = 16
    max_queued: int = 8192  # sequences waiting; beyond it new work is refused (RESOURCE_EXHAUSTED)
    # Batches run at once (each in its own inference thread). On a few cores, two one-thread runs side by
    # side beat one two-thread run: the recurrent kernels sync their threads every step, and a busy core
    # (the event loop, a client) stalls every sync (bench: 2.3 ms -> 14 ms per batch with one core busy).
    concurrent_batches: int = 1
    # A lone caller's sequence whose run is expected to take at most this long runs at once in its own call
    # (0 = never), skipping the queue and two thread hops; the expectation is this model's measured time per
    # padded step x its length.
    inline_max_ms: float = 0.0
    # A request arriving at least this long after the batcher went idle is a lone caller, not load.
    # Measured on loopback (bench/PROFILE.md): a client's own round trip takes longer than 0.2 ms,
    # while the gap between requests of a saturated loop is shorter.
    inline_min_idle_ms: float = 0.2
    # A call of at least this many sequences (up to max_batch_size), alone in its round, runs as one part
    # per intra-op thread, side by side, each on a one-thread session in a lane of its own (0 = never): no
    # per-step thread syncs. Measured (README, Performance): 2 clients x 64-sequence calls, 1.3x the seq/s of
    # one round on the inference thread.
    parallel_call_min: int = 0


class Job:
    """One request's sequences; its future gets their answers (PackedOutputs, in request order)."""

    def __init__(self, sequences: Packed, fetch: frozenset[str] | None = None, after_idle: float = 0.0) -> None:
        self.sequences = sequences
        self.fetch = fetch  # the model outputs its answer needs (None: all)
        self.after_idle = after_idle  # how long the batcher had been idle when this job arrived
        self.enqueued_at = time.perf_counter()
        self.future: asyncio.Future[PackedOutputs] = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def gone(self) -> bool:
        """Answered, failed or cancelled by its caller: nothing more to compute."""
        return self.future.done()

    def deliver(self, answers: PackedOutputs) -> None:
        if not self.future.done():
            self.future.set_result(answers)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def as_packed(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An unpadded batch's outputs in the packed layout, as views: per-step (B, T, ...) -> (B*T, ...),
    states (L*D, B, H) -> (B, L*D, H), the rest as they are."""
    return {name: value.reshape(-1, *value.shape[2:]) if name in PER_STEP
            else value.transpose(1, 0, 2) if name in PER_STATE else value for name, value in outputs.items()}


Outcome = float | Exception  # a group's run: its seconds, or what it raised


def balanced_parts(lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """Indices of sequences in `parts` runs of similar length, shortest first, each padded to its longest:
    cut where the padded steps (sequences x longest) of the costliest run are fewest, so that runs side by
    side end together. Every run holds at least one sequence."""
    order = np.argsort(lengths, kind="stable")  # (B,)
    steps = np.maximum(lengths[order], 1)  # (B,) sorted
    bounds = [0, len(order)]  # run j is order[bounds[j]:bounds[j + 1]]
    while len(bounds) - 1 < min(parts, len(order)):
        costs = [(end - start) * int(steps[end - 1]) for start, end in itertools.pairwise(bounds)]
        j = costs.index(max(costs))
        if bounds[j + 1] - bounds[j] < 2:
            break
        bounds.insert(j + 1, bounds[j] + best_cut(steps[bounds[j]:bounds[j + 1]]))
    return [order[start:end] for start, end in itertools.pairwise(bounds)]


def best_cut(steps: np.ndarray) -> int:
    """Where to cut sorted lengths (m >= 2,) in two so that the costlier side pads the fewest steps."""
    m = len(steps)
    at = np.arange(1, m)  # (m - 1,) the first side is steps[:at]
    cost = np.maximum(at * steps[at - 1], (m - at) * steps[-1])  # (m - 1,)
    return int(at[np.argmin(cost)])


class Round:
    """The jobs one collection took from the queue: their sequences packed end to end (B in all), and
    the packed answer arrays their groups' outputs are scattered into."""

    def __init__(self, runtime: ModelRuntime, jobs: Sequence[Job]) -> None:
        self.runtime = runtime
        self.jobs = list(jobs)
        if len(jobs) == 1:  # the common case at low load: no joining, nothing to cut apart afterwards
            self.lengths, self.steps = jobs[0].sequences.lengths, jobs[0].sequences.steps  # (B,), (N, F)
        else:
            self.lengths = np.concatenate([j.sequences.lengths for j in jobs])  # (B,)
            self.steps = np.concatenate([j.sequences.steps for j in jobs])  # (N, F)
        self.unanswered = [len(j) for j in jobs]  # (J,) sequences of each job not run yet
        self.fetch = self._fetch()
        self.h0, self.c0 = self._states("h0"), self._states("c0") if runtime.arch.has_cell_state else None
        self.answers: dict[str, np.ndarray] = {}  # output -> (N, ...) per step, (B, ...) per sequence
        self._answers_made = threading.Lock()  # groups run side by side create the arrays once

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """Where each sequence begins in `steps` (B,)."""
        return np.cumsum(self.lengths) - self.lengths

    @functools.cached_property
    def job_of(self) -> np.ndarray:
        """Which job each sequence belongs to (B,)."""
        return np.repeat(np.arange(len(self.jobs)), self.sizes)

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """How many sequences each job has (J,)."""
        return np.fromiter((len(j) for j in self.jobs), dtype=np.int64, count=len(self.jobs))

    def _fetch(self) -> list[str] | None:
        """The outputs any job needs, in the model's order (None: all); unrequested ones are not copied."""
        if any(j.fetch is None for j in self.jobs):
            return None
        wanted = frozenset({"logits"}).union(*(j.fetch for j in self.jobs))
        return [name for name in self.runtime.output_names if name in wanted]

    def _states(self, name: str) -> np.ndarray | None:
        """The jobs' initial states side by side (L, B, H), zeros where a job gives none."""
        if not self.runtime.arch.streaming or all(getattr(j.sequences, name) is None for j in self.jobs):
            return None
        arch = self.runtime.arch
        return np.concatenate([getattr(j.sequences, name) if getattr(j.sequences, name) is not None
                               else np.zeros((arch.num_layers, len(j), arch.hidden_size), np.float32)
                               for j in self.jobs], axis=1)  # (L, B, H)

    def groups(self, max_size: int, max_waste: float, min_split: int) -> list[np.ndarray]:
        """The round's sequences (indices) in runs of similar length, shortest first."""
        return length_groups(self.lengths, max_size=max_size, max_waste=max_waste, min_split=min_split)

    def run(self, group: np.ndarray, one_thread: bool = False) -> None:
        """Run one group as a padded batch (in the inference thread pool) and keep its answers; `one_thread`:
        on the runtime's one-thread session (groups run side by side)."""
        model = self.runtime.one_thread if one_thread else self.runtime
        if self._whole_and_unpadded(group):
            B, T = len(self.lengths), int(self.lengths[0])
            outputs = model.run(Batch(self.steps.reshape(B, T, -1), self.lengths, self.h0, self.c0), self.fetch)
            self.answers = as_packed(with_probabilities(outputs))
            return
        x, lengths = pad_rows(self.steps, self.starts[group], self.lengths[group])  # (G, T, F), (G,)
        h0 = None if self.h0 is None else self.h0[:, group]  # (L, G, H)
        c0 = None if self.c0 is None else self.c0[:, group]
        self._store(group, with_probabilities(model.run(Batch(x, lengths, h0, c0), self.fetch)), x.shape[1])

    def run_all(self, groups: list[np.ndarray], one_thread: bool = False) -> list[Outcome]:
        """Run groups one after the other; each one's seconds, or the exception it raised."""
        outcomes: list[Outcome] = []
        for group in groups:
            started = time.perf_counter()
            try:
                self.run(group, one_thread)
            except Exception as exc:  # onnxruntime raises its own types; the batcher retries the group's sequences
                outcomes.append(exc)
            else:
                outcomes.append(time.perf_counter() - started)
        return outcomes

    def _whole_and_unpadded(self, group: np.ndarray) -> bool:
        """The group is every sequence of the round, all of one (non-zero) length: the steps are the batch
        as they are and the outputs the answers (a lone sequence, a request of equal lengths)."""
        lengths = self.lengths
        return len(group) == len(lengths) and lengths[0] > 0 and bool((lengths == lengths[0]).all())

    def _store(self, group: np.ndarray, outputs: dict[str, np.ndarray], width: int) -> None:
        """Scatter a group's batch outputs into the round's packed answers."""
        packed_at, padded_at = step_rows(self.starts[group], self.lengths[group], width)
        for name, value in outputs.items():
            if name in PER_STEP:  # (G, T, ...) -> rows of (N, ...)
                rows = value.reshape(-1, *value.shape[2:])[padded_at]
                self._answer(name, len(self.steps), value.shape[2:], value.dtype)[packed_at] = rows
            elif name in PER_STATE:  # (L*D, G, H) -> (B, L*D, H)
                self._answer(name, len(self.lengths), value.shape[::2], value.dtype)[group] = value.transpose(1, 0, 2)
            else:  # (G, ...) -> (B, ...)
                self._answer(name, len(self.lengths), value.shape[1:], value.dtype)[group] = value

    def _answer(self, name: str, rows: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        with self._answers_made:
            if name not in self.answers:
                self.answers[name] = np.empty((rows, *shape), dtype=dtype)
            return self.answers[name]

    def finished(self, group: np.ndarray) -> list[int]:
        """Count `group` as run; the jobs (indices) whose last sequence it was."""
        if len(self.jobs) == 1:
            self.unanswered[0] -= len(group)
            return [0] if self.unanswered[0] == 0 else []
        done = []
        for j, ran in zip(*np.unique(self.job_of[group], return_counts=True)):
            self.unanswered[j] -= int(ran)
            if self.unanswered[j] == 0:
                done.append(int(j))
        return done

    @functools.cached_property
    def spans(self) -> list[tuple[int, int, int, int]]:
        """Each job's (first sequence, end, first step, end) in the round, as Python ints."""
        ends = np.cumsum(self.sizes)  # (J,)
        step_ends = np.concatenate([[0], np.cumsum(self.lengths)])  # (B + 1,)
        firsts = ends - self.sizes
        return list(zip(firsts.tolist(), ends.tolist(), step_ends[firsts].tolist(), step_ends[ends].tolist()))

    def answers_of(self, j: int) -> PackedOutputs:
        """Job j's answers: views into the round's arrays."""
        if len(self.jobs) == 1:
            return PackedOutputs(self.answers, self.lengths)
        first, end, step0, step_end = self.spans[j]
        return PackedOutputs({name: value[step0:step_end] if name in PER_STEP else value[first:end]
                              for name, value in self.answers.items()}, self.lengths[first:end])


class Batcher:
    """Queues work for one model version and runs it in batches, up to `concurrent_batches` at a time.

    `lanes`: threads (at least the runtime's threads) that run a big call's parts side by side
    (policy.parallel_call_min); None: such calls run as any other round."""

    def __init__(self, runtime: ModelRuntime, executor: Executor, metrics: ModelMetrics, policy: BatchPolicy,
                 lanes: Executor | None = None) -> None:
        self.runtime = runtime
        self.executor = executor
        self.lanes = lanes
        self.parallel_min = policy.parallel_call_min if lanes is not None else 0
        self.metrics = metrics
        self.max_batch_size = policy.max_batch_size if policy.enabled else 1
        self.max_delay = policy.max_queue_delay_ms / 1000.0 if policy.enabled else 0.0
        self.max_waste = policy.padding_waste
        self.min_split = policy.padding_min_split
        self.max_queued = policy.max_queued
        self.concurrent_batches = max(1, policy.concurrent_batches)
        self.inline_max = policy.inline_max_ms / 1000.0
        self.inline_min_idle = policy.inline_min_idle_ms / 1000.0
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        self.failure: BaseException | None = None  # why the loop died, once it has
        self._seconds_per_step: float | None = None  # measured run time per padded step (moving average)
        self._queued = 0  # sequences in the queue
        self._in_hand: set[Job] = set()  # taken from the queue, not yet answered
        self._open_jobs = 0  # requests queued or running
        self._idle_since = 0.0  # when the last open request finished
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._full = asyncio.Event()  # set when a full batch is queued (another round may start)
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
            job = self._queue.get_nowait()
            if job is not None:
                self._in_hand.add(job)
        for job in self._in_hand:
            job.fail(self._not_ready())
        self._in_hand, self._queued = set(), 0
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

    def enqueue(self, sequences: Packed, fetch: frozenset[str] | None = None) -> Job:
        """Queue a request's sequences; the job's future gets their answers (cancel it to withdraw them),
        at least the model outputs named in `fetch` (None: all, and "logits" always).

        Raises NotReady once the loop has died, LimitExceeded when the queue cannot take the sequences.
        """
        if self.failure is not None:
            raise self._not_ready()
        if self._queued + len(sequences) > self.max_queued:
            raise LimitExceeded("queued sequences", self._queued + len(sequences), self.max_queued,
                                "max_queued_sequences")
        job = Job(sequences, fetch, after_idle=self._idle_gap())
        self._open_jobs += 1
        job.future.add_done_callback(self._job_done)
        if self._runs_now(job):
            # Decided once the requests that arrived with this one have been read: still alone, or queued.
            asyncio.get_running_loop().call_soon(self._now_or_queued, job)
        else:
            self._put(job)
        return job

    def _put(self, job: Job) -> None:
        self._queued += len(job)
        if self._queued >= self.max_batch_size:
            self._full.set()
        self._queue.put_nowait(job)

    def _now_or_queued(self, job: Job) -> None:
        if job.gone:
            return
        if self._open_jobs == 1 and self._queue.empty():
            self._run_now(job)
        else:
            self._put(job)

    async def submit(self, sequences: Packed, fetch: frozenset[str] | None = None) -> PackedOutputs:
        """Queue sequences and wait for their answers; cancelling the caller withdraws them."""
        job = self.enqueue(sequences, fetch)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.future.cancel()
            raise

    async def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """Gather jobs up to max_batch_size sequences (each into `_in_hand`); returns (jobs, stop requested)."""
        jobs = [first]
        taken = len(first)
        # Waiting for more only pays under load; a request after an idle spell runs at once.
        delay = self.max_delay if first.after_idle < self.inline_min_idle else 0.0
        deadline = time.perf_counter() + delay
        while taken < self.max_batch_size:
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
                return jobs, True
            self._queued -= len(nxt)
            self._in_hand.add(nxt)
            jobs.append(nxt)
            taken += len(nxt)
        return jobs, False

    def _job_done(self, _: asyncio.Future) -> None:
        self._open_jobs -= 1
        if self._open_jobs == 0:
            self._idle_since = time.perf_counter()

    def _idle_gap(self) -> float:
        """Seconds the batcher had no open request before now (0 while busy)."""
        return 0.0 if self._open_jobs else time.perf_counter() - self._idle_since

    def _runs_now(self, job: Job) -> bool:
        """A lone caller's short sequence runs at once, in its own call: no queue, no thread hops.

        Only when the batcher is idle and has been for inline_min_idle: under load the event loop must
        stay free to read the next requests (which then gather into batches), and a request that follows
        the previous one's answer that quickly is load, not a lone caller. The sequence's expected run
        time (this model's measured time per padded step x its length) must be within inline_max.
        """
        return (len(job) == 1 and self._open_jobs == 1 and job.after_idle >= self.inline_min_idle
                and self._queue.empty() and self._running.is_set() and self._seconds_per_step is not None
                and max(1, int(job.sequences.lengths[0])) * self._seconds_per_step <= self.inline_max)

    def _run_now(self, job: Job) -> None:
        work, group = Round(self.runtime, [job]), np.zeros(1, dtype=np.int64)
        self._started(work)
        [outcome] = work.run_all([group])
        if isinstance(outcome, Exception):
            job.fail(outcome)
            return
        self._observe(work, group, outcome)
        self._answer(work, group)

    async def _run(self, work: Round, groups: list[np.ndarray]) -> list[Outcome]:
        """Run groups in one trip to the inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work.run_all, groups)

    def _started(self, work: Round) -> None:
        """A round starts: its requests' waits into the metrics."""
        self.metrics.observe_waits(time.perf_counter(), (job.enqueued_at for job in work.jobs))

    def _observe(self, work: Round, group: np.ndarray, seconds: float) -> None:
        """Metrics of a group that ran, and its time per padded step for the next run-now decision."""
        self.metrics.observe_batch(len(group), seconds)
        self._measure(len(group) * max(1, int(work.lengths[group].max())), seconds)

    def _measure(self, padded_steps: int, seconds: float) -> None:
        """Fold one run into the moving average of seconds per padded step."""
        rate = seconds / padded_steps
        previous = self._seconds_per_step
        self._seconds_per_step = rate if previous is None else 0.8 * previous + 0.2 * rate

    async def _run_alone(self, work: Round, group: np.ndarray, failure: Exception) -> None:
        """After `group` failed as one batch: run its sequences one by one, so only the culprits' jobs fail."""
        if len(group) == 1:
            work.jobs[work.job_of[group[0]]].fail(failure)
            return
        for i, index in enumerate(group.tolist()):
            job = work.jobs[work.job_of[index]]
            if job.gone:
                continue
            [outcome] = await self._run(work, [group[i:i + 1]])
            if isinstance(outcome, Exception):
                job.fail(outcome)

    def _answer(self, work: Round, group: np.ndarray) -> None:
        """Hand every job whose last sequence was in `group` its answers."""
        for j in work.finished(group):
            work.jobs[j].deliver(work.answers_of(j))

    async def _loop(self) -> None:
        """Take what is queued whenever a batch slot is free, and run it as a round beside the others."""
        running: set[asyncio.Task] = set()
        stopping = False
        while not stopping:
            while len(running) >= self.concurrent_batches:
                await self._reap(running, asyncio.FIRST_COMPLETED)
            while running and self._queued < self.max_batch_size:
                await self._next_slot(running)
            first = await self._queue.get()
            await self._running.wait()
            if first is None:
                break
            self._queued -= len(first)
            self._in_hand.add(first)
            jobs, stopping = await self._collect(first)
            live = [job for job in jobs if not job.gone]  # cancelled callers leave cleanly
            self._in_hand.difference_update(job for job in jobs if job.gone)
            if not live:
                continue
            if self.concurrent_batches == 1:
                await self._run_round(Round(self.runtime, live))  # one slot: no task to schedule and reap
            else:
                running.add(asyncio.create_task(self._run_round(Round(self.runtime, live))))
        await self._reap(running, asyncio.ALL_COMPLETED)

    async def _next_slot(self, running: set[asyncio.Task]) -> None:
        """Wait until a round ends or a full batch is queued: only a full batch starts beside a running
        round, smaller ones wait and gather more (side by side, two small runs cost more than one)."""
        self._full.clear()
        full = asyncio.ensure_future(self._full.wait())
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
            self._in_hand.difference_update(work.jobs)

    def _side_by_side(self, work: Round) -> bool:
        """A big call alone in its round, that fits one batch, on a runtime with a one-thread session."""
        return (0 < self.parallel_min <= len(work.lengths) <= self.max_batch_size and len(work.jobs) == 1
                and self.runtime.one_thread is not None)

    async def _run_side_by_side(self, work: Round) -> tuple[list[np.ndarray], list[Outcome]]:
        """Run the round as one part per thread, all at once in `lanes`; the event loop goes on serving."""
        parts = balanced_parts(work.lengths, self.runtime.threads)
        runs = [asyncio.wrap_future(self.lanes.submit(work.run_all, [part], True)) for part in parts]
        outcomes = [outcome for ran in await asyncio.gather(*runs) for outcome in ran]
        self.metrics.side_by_side.inc()
        return parts, outcomes

    async def _run_groups(self, work: Round) -> None:
        self._started(work)
        if self._side_by_side(work):
            groups, outcomes = await self._run_side_by_side(work)
        else:
            groups = work.groups(self.max_batch_size, self.max_waste, self.min_split)
            outcomes = await self._run(work, groups)
        for group, outcome in zip(groups, outcomes):
            if isinstance(outcome, Exception):
                log.warning("batch failed; retrying its sequences one by one",
                            extra={"model": self.runtime.name, "sequences": len(group), "error": repr(outcome)})
                await self._run_alone(work, group, outcome)
            else:
                self._observe(work, group, outcome)
            self._answer(work, group)
