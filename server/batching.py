"""Dynamic batching: concurrent sequences for one model version run as one padded onnxruntime batch.

Each sequence is a `WorkItem`. A `Batcher` takes whatever is queued (up to max_batch_size,
waiting up to max_queue_delay_ms for more), drops items whose caller has gone, groups the rest
by length so padding stays small, runs each group in the inference thread pool and hands every
item its own slice of the results. With batching off, each item runs alone through the same
code, so results are identical either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from server.metrics import ModelMetrics
from server.runtime import BatchInputs, ModelRuntime

# Per-sequence result: contract output name -> that sequence's slice.
SequenceOutputs = dict[str, np.ndarray]


@dataclass(eq=False)
class WorkItem:
    steps: np.ndarray  # (T, F) float32
    h0: np.ndarray | None = None  # (L, H) initial state, streaming models
    c0: np.ndarray | None = None  # (L, H)
    future: asyncio.Future[SequenceOutputs] | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def length(self) -> int:
        return self.steps.shape[0]


def pad_items(runtime: ModelRuntime, items: Sequence[WorkItem]) -> BatchInputs:
    """Stack items into one right-padded batch: x (B, T, F), lengths (B,), h0/c0 (L, B, H)."""
    B, F = len(items), runtime.arch.input_size
    lengths = np.fromiter((it.length for it in items), dtype=np.int64, count=B)
    T = max(1, int(lengths.max()))  # a batch of empty chunks still needs one (padded) step
    x = np.zeros((B, T, F), dtype=np.float32)
    for i, it in enumerate(items):
        x[i, : it.length] = it.steps
    h0 = c0 = None
    if runtime.arch.streaming:
        h0 = runtime.zero_state(B)
        for i, it in enumerate(items):
            if it.h0 is not None:
                h0[:, i] = it.h0
        if runtime.arch.has_cell_state:
            c0 = runtime.zero_state(B)
            for i, it in enumerate(items):
                if it.c0 is not None:
                    c0[:, i] = it.c0
    return BatchInputs(x, lengths, h0, c0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities along the last axis."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def split_outputs(outputs: dict[str, np.ndarray], lengths: np.ndarray) -> list[SequenceOutputs]:
    """Cut batch outputs back into per-sequence results, dropping padding steps.

    Adds `probabilities` (softmax of the logits), computed once for the whole batch.
    """
    outputs = {**outputs, "probabilities": softmax(outputs["logits"])}
    per_step = {"outputs", "attention", "step_logits"}  # (B, T, ...)
    per_state = {"h_n", "c_n"}  # (L*D, B, H)
    results = []
    for i, length in enumerate(lengths):
        item = {}
        for name, value in outputs.items():
            if name in per_step:
                item[name] = value[i, :length]
            elif name in per_state:
                item[name] = value[:, i]
            else:
                item[name] = value[i]
        results.append(item)
    return results


def run_items(runtime: ModelRuntime, items: Sequence[WorkItem]) -> list[SequenceOutputs]:
    """Run items as one padded batch (called in the inference thread pool)."""
    batch = pad_items(runtime, items)
    return split_outputs(runtime.run(batch), batch.lengths)


def group_by_length(items: Sequence[WorkItem], max_waste: float) -> list[list[WorkItem]]:
    """Sort by length and cut where padding would exceed `max_waste` x the real steps."""
    groups: list[list[WorkItem]] = []
    current: list[WorkItem] = []
    real = 0
    for it in sorted(items, key=lambda it: it.length):
        steps = max(1, it.length)
        if current and steps * (len(current) + 1) > (1 + max_waste) * (real + steps):
            groups.append(current)
            current, real = [], 0
        current.append(it)
        real += steps
    if current:
        groups.append(current)
    return groups


class Batcher:
    """Queues work for one model version and runs it in batches, one batch in flight at a time."""

    def __init__(
        self, runtime: ModelRuntime, executor: Executor, metrics: ModelMetrics,
        max_batch_size: int, max_queue_delay_ms: float, max_waste: float, enabled: bool = True,
    ) -> None:
        self.runtime = runtime
        self.executor = executor
        self.metrics = metrics
        self.max_batch_size = max_batch_size if enabled else 1
        self.max_delay = max_queue_delay_ms / 1000.0 if enabled else 0.0
        self.max_waste = max_waste
        self._queue: asyncio.Queue[WorkItem | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.runtime.name}")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

    async def submit(self, items: Sequence[WorkItem]) -> list[SequenceOutputs]:
        """Queue items and wait for their results; cancelling the caller withdraws them."""
        loop = asyncio.get_running_loop()
        for it in items:
            it.future = loop.create_future()
            self._queue.put_nowait(it)
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        except asyncio.CancelledError:
            for it in items:
                it.future.cancel()
            raise

    async def _collect(self, first: WorkItem) -> tuple[list[WorkItem], bool]:
        """Gather up to max_batch_size items; returns (items, stop requested)."""
        items = [first]
        deadline = time.perf_counter() + self.max_delay
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
            items.append(nxt)
        return items, False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            items, stopping = await self._collect(first)
            live = [it for it in items if not it.future.done()]  # cancelled callers leave cleanly
            for group in group_by_length(live, self.max_waste):
                started = time.perf_counter()
                waited = [started - it.enqueued_at for it in group]
                try:
                    results = await loop.run_in_executor(self.executor, run_items, self.runtime, group)
                except Exception as exc:  # a failed run fails only its own group
                    for it in group:
                        if not it.future.done():
                            it.future.set_exception(exc)
                    continue
                self.metrics.observe_batch(waited, time.perf_counter() - started)
                for it, result in zip(group, results):
                    if not it.future.done():
                        it.future.set_result(result)
