"""The batcher on its own: grouping by length, cancellation, a failing run, a dying loop, the queue bound,
the queue delay and the inline path.

A fake runtime stands in for onnxruntime: per-step outputs are the running sum of the steps, the state
and the logits each sequence's sum over its real steps, and a sequence holding POISON makes the whole
run raise, as a runtime error in one input would. A fake clock stands in for time where a test is about
time (idle spells, the queue delay, waits): it moves only when the test advances it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from seqserve.inference import Packed
from seqserve.server.batching import Batcher, BatchPolicy, Clock, Job
from seqserve.server.errors import LimitExceeded, NotReady
from seqserve.server.metrics import Metrics

POISON = 666.0
FEATURES = 3


class FakeRuntime:
    name, number, threads = "fake", 1, 1
    arch = SimpleNamespace(input_size=FEATURES, streaming=False, has_cell_state=False)
    output_names = ["outputs", "h_n", "logits"]

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.fetched: list[list[str] | None] = []

    def run(self, batch, fetch=None) -> dict[str, np.ndarray]:
        if (batch.x == POISON).any():
            raise RuntimeError("onnxruntime: bad input")
        self.batch_sizes.append(len(batch.lengths))
        self.fetched.append(fetch)
        total = batch.x.sum(axis=1)  # (B, F): padding is zeros, so this is the real steps' sum
        outputs = {"outputs": batch.x.cumsum(axis=1), "h_n": total[None], "logits": total}  # (B, T, F), (1, B, F)
        return {name: outputs[name] for name in fetch or outputs}


def steps(length: int, value: float = 1.0) -> np.ndarray:
    return np.full((length, FEATURES), value, np.float32)


def run(coro):
    return asyncio.run(coro)


class FakeClock:
    """Time that moves only when the test advances it; a timer fires once the clock has passed its moment."""

    def __init__(self) -> None:
        self.time = 1000.0
        self._timers: list[FakeTimer] = []
        self._armed = asyncio.Event()

    def now(self) -> float:
        return self.time

    def call_later(self, seconds: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(self.time + seconds, callback)
        self._timers.append(timer)
        self._armed.set()
        return timer

    def advance(self, seconds: float) -> None:
        self.time += seconds
        due = [timer for timer in self._timers if timer.at <= self.time]
        self._timers = [timer for timer in self._timers if timer.at > self.time and not timer.cancelled]
        for timer in due:
            timer.fire()

    async def waited_on(self) -> None:
        """Return once a timer is set on this clock (the batcher waits for more requests)."""
        await asyncio.wait_for(self._armed.wait(), 5.0)
        self._armed.clear()

    @property
    def pending(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return sum(not timer.cancelled for timer in self._timers)


class FakeTimer:
    def __init__(self, at: float, callback: Callable[[], object]) -> None:
        self.at, self.callback, self.cancelled = at, callback, False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback()


async def answered(*jobs: Job) -> None:
    """Wait for the jobs' answers; fail rather than hang where they never come (the clock is not advancing)."""
    await asyncio.wait_for(asyncio.gather(*(job.future for job in jobs)), 5.0)


async def started(runtime: FakeRuntime, clock: Clock | None = None, **policy) -> Batcher:
    batcher = Batcher(runtime, ThreadPoolExecutor(1), Metrics().for_model("fake"), BatchPolicy(**policy),
                      clock=clock)
    batcher.start()
    return batcher


def test_a_request_runs_in_length_groups_and_is_answered_in_its_own_order():
    lengths = (10, 1, 11, 30, 12, 29)

    async def scenario():
        runtime = FakeRuntime()
        batcher = await started(runtime, padding_waste=0.5, padding_min_split=1)
        answers = await batcher.submit(Packed.of([steps(n, value=i) for i, n in enumerate(lengths)], FEATURES))
        await batcher.stop()
        return runtime, answers

    runtime, answers = run(scenario())
    assert runtime.batch_sizes == [1, 3, 2]  # [1], [10, 11, 12], [29, 30]: padding within half the real steps
    assert answers.lengths.tolist() == list(lengths)
    expected = np.array([[n * i] * FEATURES for i, n in enumerate(lengths)], np.float32)  # (B, F)
    np.testing.assert_array_equal(answers.arrays["logits"], expected)
    np.testing.assert_array_equal(answers.arrays["h_n"][:, 0], expected)  # states (B, L*D, H)
    for i, n in enumerate(lengths):
        sequence = answers.sequence(i)
        np.testing.assert_array_equal(sequence["outputs"], np.cumsum(steps(n, value=i), axis=0))
        np.testing.assert_array_equal(sequence["logits"], expected[i])
    np.testing.assert_array_equal(answers.padded("outputs")[1, 1:], 0)  # padding put back as zeros


def test_one_batch_answers_every_request_with_its_own_slice():
    async def scenario():
        runtime = FakeRuntime()
        batcher = await started(runtime)
        batcher.hold()
        jobs = [batcher.enqueue(Packed.one(steps(n, value=n))) for n in (4, 5, 6)]
        batcher.release()
        results = [await job.future for job in jobs]
        await batcher.stop()
        return runtime, results

    runtime, results = run(scenario())
    assert runtime.batch_sizes == [3]
    for n, answers in zip((4, 5, 6), results, strict=True):
        result = answers.sequence(0)
        np.testing.assert_array_equal(result["logits"], np.full(FEATURES, n * n, np.float32))
        np.testing.assert_allclose(result["probabilities"].sum(), 1.0, rtol=1e-6)


def test_metrics_count_each_request_wait_once_and_each_run():
    """Three requests (9 sequences) held, then run as one round in two length groups: three waits (one a
    request, however many sequences it has, each the time held), two runs, nine sequences."""
    held_s = 0.05

    async def scenario():
        metrics, clock = Metrics(), FakeClock()
        batcher = Batcher(FakeRuntime(), ThreadPoolExecutor(1), metrics.for_model("fake"),
                          BatchPolicy(padding_waste=0.5, padding_min_split=1), clock=clock)
        batcher.start()
        batcher.hold()
        jobs = [batcher.enqueue(Packed.of([steps(n) for n in lengths], FEATURES))
                for lengths in ((2, 3, 2), (30,), (2, 2, 3, 31, 29))]
        clock.advance(held_s)
        batcher.release()
        await answered(*jobs)
        await batcher.stop()
        return metrics

    metrics = run(scenario())
    value = lambda name: metrics.registry.get_sample_value(name, {"model": "fake"})  # noqa: E731
    assert value("seqserve_queue_seconds_count") == 3
    assert value("seqserve_queue_seconds_sum") == pytest.approx(3 * held_s)
    assert value("seqserve_inference_seconds_count") == 2 and value("seqserve_batch_size_sum") == 9
    assert value("seqserve_sequences_total") == 9


def test_a_cancelled_request_leaves_the_batch():
    async def scenario():
        runtime = FakeRuntime()
        batcher = await started(runtime)
        batcher.hold()
        gone = batcher.enqueue(Packed.one(steps(5)))
        kept = batcher.enqueue(Packed.one(steps(5)))
        gone.future.cancel()
        batcher.release()
        result = await kept.future
        await batcher.stop()
        return runtime, result

    runtime, result = run(scenario())
    assert runtime.batch_sizes == [1] and len(result) == 1


def test_a_failing_batch_fails_only_its_culprit():
    async def scenario():
        runtime = FakeRuntime()
        batcher = await started(runtime)
        batcher.hold()
        good = [batcher.enqueue(Packed.one(steps(5))) for _ in range(3)]
        bad = batcher.enqueue(Packed.one(steps(5, POISON)))
        batcher.release()
        answers = [await job.future for job in good]
        with pytest.raises(RuntimeError, match="bad input"):
            await bad.future
        await batcher.stop()
        return runtime, answers

    runtime, answers = run(scenario())
    assert all(len(a) == 1 for a in answers)
    assert runtime.batch_sizes == [1, 1, 1]  # the batch of 4 failed, then each ran alone


def test_a_dead_loop_fails_its_queue_refuses_new_work_and_reports():
    async def scenario():
        runtime = FakeRuntime()
        batcher = await started(runtime)
        reported = []
        batcher.on_failure = reported.append

        async def broken_collect(first):
            raise ValueError("bug in the batcher")

        batcher._collect = broken_collect
        queued = batcher.enqueue(Packed.one(steps(3)))
        with pytest.raises(NotReady, match="not ready"):
            await queued.future
        with pytest.raises(NotReady):
            batcher.enqueue(Packed.one(steps(3)))
        await batcher.stop()
        return reported

    [failure] = run(scenario())
    assert isinstance(failure, ValueError)


def test_the_queue_is_bounded():
    async def scenario():
        batcher = await started(FakeRuntime(), max_queued=4)
        batcher.hold()
        batcher.enqueue(Packed.of([steps(2)] * 3, FEATURES))
        with pytest.raises(LimitExceeded, match="max_queued_sequences") as refused:
            batcher.enqueue(Packed.of([steps(2)] * 2, FEATURES))
        batcher.enqueue(Packed.one(steps(2)))  # exactly at the bound
        batcher.release()
        await batcher.stop()
        return str(refused.value)

    assert "5 is over the limit of 4" in run(scenario())


class SlowRuntime(FakeRuntime):
    """Each run takes a while; records how many runs were in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.active = self.most = 0
        self.lock = threading.Lock()

    def run(self, batch, fetch=None) -> dict[str, np.ndarray]:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.02)
        with self.lock:
            self.active -= 1
        return super().run(batch, fetch)


@pytest.mark.parametrize("per_request, overlapped", [(64, 2), (1, 1)])
def test_only_full_batches_run_beside_a_running_one(per_request, overlapped):
    async def scenario():
        runtime = SlowRuntime()
        batcher = Batcher(runtime, ThreadPoolExecutor(2), Metrics().for_model("fake"),
                          BatchPolicy(max_batch_size=64, concurrent_batches=2, max_queue_delay_ms=0))
        batcher.start()

        async def caller(value: float):
            for _ in range(5):
                answers = await batcher.submit(Packed.of([steps(4, value)] * per_request, FEATURES))
                np.testing.assert_array_equal(answers.arrays["logits"], np.full((per_request, FEATURES), 4 * value))

        await asyncio.gather(caller(1.0), caller(2.0))
        await batcher.stop()
        return runtime.most

    assert run(scenario()) == overlapped


def test_a_batch_fetches_what_its_requests_ask_for_and_no_more():
    async def scenario():
        runtime = FakeRuntime()
        batcher = await started(runtime)
        batcher.hold()
        small = batcher.enqueue(Packed.one(steps(4)), frozenset({"logits"}))
        big = batcher.enqueue(Packed.one(steps(4)), frozenset({"logits", "outputs"}))
        batcher.release()
        answers = [await small.future, await big.future]
        alone = await batcher.submit(Packed.one(steps(4)), frozenset({"probabilities"}))  # not a model output
        await batcher.stop()
        return runtime.fetched, answers, alone

    fetched, [small, big], alone = run(scenario())
    assert fetched == [["outputs", "logits"], ["logits"]]  # the union, in the model's order; logits always
    assert "outputs" in big.arrays and "h_n" not in big.arrays and set(alone.arrays) == {"logits", "probabilities"}
    np.testing.assert_array_equal(big.sequence(0)["outputs"], np.cumsum(steps(4), axis=0))


def test_a_lone_caller_after_an_idle_spell_is_answered_at_once_and_load_is_queued():
    async def scenario():
        runtime, clock = FakeRuntime(), FakeClock()
        batcher = await started(runtime, clock, inline_max_ms=50.0, inline_min_idle_ms=1.0, max_queue_delay_ms=0)
        await answered(batcher.enqueue(Packed.one(steps(3))))  # through the queue: measures the time per step
        clock.advance(0.01)  # idle
        lone = batcher.enqueue(Packed.one(steps(3, value=2.0)))
        await asyncio.sleep(0)  # one turn of the loop: the requests read with it would be queued by now
        at_once = lone.future.done()
        burst = [batcher.enqueue(Packed.one(steps(3))) for _ in range(2)]  # right after: load, not a lone caller
        await asyncio.sleep(0)
        queued = [not job.future.done() for job in burst]
        await answered(lone, *burst)
        clock.advance(0.01)  # idle again
        pair = [batcher.enqueue(Packed.one(steps(3))) for _ in range(2)]  # read together: one batch
        await answered(*pair)
        await batcher.stop()
        return at_once, queued, [job.future.result() for job in (lone, *burst)], runtime.batch_sizes[-1]

    at_once, queued, [lone, *burst], last_batch = run(scenario())
    assert at_once and queued == [True, True] and last_batch == 2
    np.testing.assert_array_equal(lone.arrays["logits"], [[6.0] * FEATURES])
    assert all(len(a) == 1 for a in burst)


def test_a_request_sooner_than_the_idle_spell_is_load_and_is_queued():
    """inline_min_idle: a request 0.5 ms after the last answer is load (queued), 1.5 ms after it a lone caller."""

    async def scenario():
        runtime, clock = FakeRuntime(), FakeClock()
        batcher = await started(runtime, clock, inline_max_ms=50.0, inline_min_idle_ms=1.0, max_queue_delay_ms=0)
        await answered(batcher.enqueue(Packed.one(steps(3))))  # measures the time per step
        outcomes = []
        for gap_s in (0.0005, 0.0015):
            clock.advance(gap_s)
            job = batcher.enqueue(Packed.one(steps(3)))
            await asyncio.sleep(0)
            outcomes.append(job.future.done())
            await answered(job)
        await batcher.stop()
        return outcomes

    assert run(scenario()) == [False, True]


def test_under_load_a_round_waits_for_more_up_to_the_queue_delay():
    """max_queue_delay: a round taken under load waits for late requests until its batch is full, or until
    the delay has passed on the clock, not before."""
    delay_s = 2.0

    async def scenario():
        runtime, clock = FakeRuntime(), FakeClock()
        batcher = await started(runtime, clock, max_batch_size=3, max_queue_delay_ms=delay_s * 1000,
                                inline_min_idle_ms=1.0)
        batcher.hold()
        # The first arrives after an idle spell (it runs at once, with what is queued); the rest under load.
        held = [batcher.enqueue(Packed.one(steps(2))) for _ in range(4)]
        batcher.release()
        await clock.waited_on()  # the second round (the fourth request) waits for more
        seen = [list(runtime.batch_sizes)]
        clock.advance(delay_s / 2)
        late = [batcher.enqueue(Packed.one(steps(2))) for _ in range(2)]  # fill its batch: it runs at once
        await answered(*held, *late)
        seen.append(list(runtime.batch_sizes))
        one = batcher.enqueue(Packed.one(steps(2)))  # right after: load; nothing else comes
        await clock.waited_on()
        clock.advance(delay_s * 0.75)
        await asyncio.sleep(0.01)  # time enough to run, were it not waiting
        waited = not one.future.done()
        clock.advance(delay_s * 0.25)
        await answered(one)
        seen.append(list(runtime.batch_sizes))
        await batcher.stop()
        return seen, waited, clock.pending

    seen, waited, timers_left = run(scenario())
    assert seen == [[3], [3, 3], [3, 3, 1]]  # full at once; the fourth waited for the late two; the last alone
    assert waited and timers_left == 0


def test_after_an_idle_spell_a_round_does_not_wait():
    """A request after an idle spell runs at once, however long the queue delay: one arriving just after
    it runs in a round of its own."""

    async def scenario():
        runtime, clock = FakeRuntime(), FakeClock()
        batcher = await started(runtime, clock, max_batch_size=3, max_queue_delay_ms=2000.0, inline_min_idle_ms=1.0,
                                inline_max_ms=0)
        await answered(batcher.enqueue(Packed.one(steps(2))))  # first ever: the batcher has always been idle
        clock.advance(0.01)  # idle
        lone = batcher.enqueue(Packed.one(steps(2)))
        await answered(lone)  # without waiting for the clock
        after = batcher.enqueue(Packed.one(steps(2)))  # load: it waits, on its own, for the delay
        await clock.waited_on()
        clock.advance(2.0)
        await answered(after)
        await batcher.stop()
        return runtime.batch_sizes, clock.pending

    batch_sizes, timers_left = run(scenario())
    assert batch_sizes == [1, 1, 1] and timers_left == 0


def test_requests_batched_together_each_get_their_own_sequences_back():
    requests = [[(5, 1.0), (2, 2.0)], [(9, 3.0), (1, 4.0), (7, 5.0)], [(3, 6.0)]]  # (length, value) per sequence

    async def scenario():
        runtime = FakeRuntime()
        batcher = await started(runtime, padding_waste=0.1, padding_min_split=1)
        batcher.hold()
        jobs = [batcher.enqueue(Packed.of([steps(n, v) for n, v in request], FEATURES)) for request in requests]
        batcher.release()
        answers = [await job.future for job in jobs]
        await batcher.stop()
        return runtime, answers

    runtime, answers = run(scenario())
    assert len(runtime.batch_sizes) > 1  # split by length across the requests
    for request, got in zip(requests, answers, strict=True):
        assert got.lengths.tolist() == [n for n, _ in request]
        for i, (n, v) in enumerate(request):
            np.testing.assert_array_equal(got.sequence(i)["outputs"], np.cumsum(steps(n, v), axis=0))
            np.testing.assert_array_equal(got.sequence(i)["logits"], np.full(FEATURES, n * v))
