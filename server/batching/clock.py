"""The batcher's clock: what "now" is and how to wait, injectable so that timing tests need no real sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Seconds on a monotonic scale (`now`, also read from inference threads) and a wait on that scale."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: time.perf_counter, and the event loop's sleep."""

    def now(self) -> float:
        return time.perf_counter()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Deadline:
    """A moment `seconds` from now on `clock`; awaits race it. One timer serves every wait (made at the first)."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.at = clock.now() + seconds
        self._timer: asyncio.Future[None] | None = None

    @property
    def passed(self) -> bool:
        return self.clock.now() >= self.at

    async def first(self, awaitable: Awaitable[T]) -> T:
        """What `awaitable` gives, if it gives it before the deadline; TimeoutError otherwise."""
        if self._timer is None:
            self._timer = asyncio.ensure_future(self.clock.sleep(self.at - self.clock.now()))
        waiting = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait((waiting, self._timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        raise TimeoutError

    def close(self) -> None:
        """Stop the timer (the waits are over)."""
        if self._timer is not None:
            self._timer.cancel()
