"""The bounded stream loop of both protocols (seqserve.v1's EncodeStream, the Open Inference Protocol's
ModelStreamInfer): requests are read, validated and queued as they arrive and answered as each completes.

Back-pressure, so that a client that stops reading answers stops being read (gRPC flow control then
holds its writes) instead of piling answers up in server memory:

- a request takes one of `max_stream_in_flight` slots when it is read and gives it back when its
  answer has been sent;
- before it is queued, a request holds its answer's bytes (the protocol's upper-bound estimate, known
  from the shapes before anything runs) until that answer is sent, within `max_stream_unsent_bytes`
  per stream and `max_process_unsent_bytes` for all streams of the process. A request over either
  bound waits (and the stream is not read meanwhile) until the client reads; it is never failed for it.
  A single answer bigger than a bound still goes through, alone.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import grpc
from prometheus_client import Gauge

from .calls import Tally, this_call

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Admitted(Protocol):
    """A request read from a stream and validated, its answer's size known."""

    @property
    def answer_bytes(self) -> int:
        """An upper bound of its answer's serialized bytes."""
        ...

    def start(self) -> asyncio.Future[Any]:
        """Queue it; the future's result makes the answer."""
        ...


Call = TypeVar("Call", bound=Admitted)


class ByteBudget:
    """Bytes of streamed answers held unsent by all the streams of the process, within `limit`; a stream
    that needs more waits for others to be sent (`wait_for`)."""

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most ever held at once (what tests check against the bound)
        self._gauge = gauge
        self._released = asyncio.Event()

    def fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def take(self, size: int) -> None:
        self.held += size
        self.peak = max(self.peak, self.held)
        if self._gauge is not None:
            self._gauge.inc(size)

    def give(self, size: int) -> None:
        """Bytes sent: every waiting stream checks again whether its answer fits."""
        self.held -= size
        if self._gauge is not None:
            self._gauge.dec(size)
        released, self._released = self._released, asyncio.Event()
        released.set()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._released.wait()


@dataclass
class StreamBytes:
    """One stream's unsent answers' bytes, within `limit` and its process's `budget`."""

    budget: ByteBudget
    limit: int
    held: int = 0

    def fits(self, size: int) -> bool:
        return (self.held == 0 or self.held + size <= self.limit) and self.budget.fits(size)

    async def take(self, size: int) -> None:
        """Hold `size` bytes, once they fit (until then the stream is not read)."""
        if not self.fits(size):
            await self.budget.wait_for(lambda: self.fits(size))
        self.held += size
        self.budget.take(size)

    def give(self, size: int) -> None:
        self.held -= size
        self.budget.give(size)


@dataclass(frozen=True)
class StreamBounds:
    """What a stream may hold: answers (count) and their bytes, its own and the process's."""

    in_flight: int
    stream_bytes: int
    budget: ByteBudget


@dataclass
class _Unsent(Generic[Answer]):
    message: Answer
    held_bytes: int


@dataclass
class _Stream(Generic[Request, Call, Answer]):
    """The state of one call of `answer_stream`."""

    admit: Callable[[Request], Call]
    answer: Callable[[Request, Call, Any], Answer]
    refuse: Callable[[Request, grpc.StatusCode, str], Answer]
    tally: Tally
    bytes: StreamBytes
    slots: asyncio.Semaphore
    answers: asyncio.Queue[_Unsent[Answer] | None] = field(default_factory=asyncio.Queue)
    pending: set[asyncio.Future[Any]] = field(default_factory=set)

    async def read(self, requests: AsyncIterator[Request]) -> None:
        """Read, admit and queue requests while the bounds allow; None on the queue when reading ends."""
        try:
            while True:
                await self.slots.acquire()  # a slot before reading: the cap holds what is read
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    break
                await self._start(request)
        finally:
            self.answers.put_nowait(None)

    async def _start(self, request: Request) -> None:
        started = time.perf_counter()
        try:
            admitted = self.admit(request)
            size = admitted.answer_bytes
            await self.bytes.take(size)
        except Exception as exc:
            self._refused(request, exc, started, 0)
            return
        try:
            future = admitted.start()
        except Exception as exc:
            self._refused(request, exc, started, size)
            return
        self.pending.add(future)
        future.add_done_callback(functools.partial(self._done, request, admitted, started, size))

    def _done(self, request: Request, admitted: Call, started: float, size: int,
              future: asyncio.Future[Any]) -> None:
        self.pending.discard(future)
        if future.cancelled():
            self.bytes.give(size)
            return
        failure = future.exception()
        if failure is not None:
            self._refused(request, failure, started, size)
            return
        self.answers.put_nowait(_Unsent(self.answer(request, admitted, future.result()), size))
        self.tally.record(grpc.StatusCode.OK, started)

    def _refused(self, request: Request, exc: BaseException, started: float, size: int) -> None:
        """Answer a request that failed in-band (the stream goes on)."""
        self.answers.put_nowait(_Unsent(self.refuse(request, *self.tally.failed(exc, started)), size))

    def sent(self, unsent: _Unsent[Answer]) -> None:
        self.bytes.give(unsent.held_bytes)
        self.slots.release()

    def close(self) -> None:
        """The stream ended (or was cancelled): drop what is queued and give back every byte held."""
        for future in list(self.pending):
            future.cancel()
        if self.bytes.held:
            self.bytes.give(self.bytes.held)


async def answer_stream(
    requests: AsyncIterator[Request],
    admit: Callable[[Request], Call],
    answer: Callable[[Request, Call, Any], Answer],
    refuse: Callable[[Request, grpc.StatusCode, str], Answer],
    bounds: StreamBounds,
) -> AsyncIterator[Answer]:
    """Answer every request of a stream, each as it completes, within `bounds`.

    `admit` validates a request (raising a ServingError for a bad one), saying how big its answer may
    be; `answer` makes a request's message from what its call's future gave; `refuse` makes the in-band
    answer of a request that failed, from its status code and message.
    """
    held = StreamBytes(bounds.budget, bounds.stream_bytes)
    stream: _Stream[Request, Call, Answer] = _Stream(admit, answer, refuse, this_call(), held,
                                                     asyncio.Semaphore(bounds.in_flight))
    reader = asyncio.create_task(stream.read(aiter(requests)))
    try:
        reading = True
        while reading or stream.pending or not stream.answers.empty():
            item = await stream.answers.get()
            if item is None:
                reading = False
                continue
            yield item.message
            stream.sent(item)
        await reader  # re-raises a failure to read the requests
    finally:
        reader.cancel()
        stream.close()
