"""The batcher's clock: what "now" is and when a callback is due, injectable so that timing tests need no
real sleeps. `Deadline` bounds an await by it, as asyncio.timeout does by the event loop's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Seconds on a monotonic scale (`now`, also read from inference threads) and callbacks due on it
    (`call_later`, from the event loop's thread)."""

    def now(self) -> float: ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer: ...


class MonotonicClock:
    """The real clock: time.perf_counter, and the running event loop's timers."""

    def now(self) -> float:
        return time.perf_counter()

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(seconds, callback)


class Deadline:
    """A moment `seconds` from now on `clock`, that awaits in the current task can be bounded by."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.at = clock.now() + seconds

    @property
    def passed(self) -> bool:
        return self.clock.now() >= self.at

    async def first(self, awaitable: Awaitable[T]) -> T:
        """What `awaitable` gives, if it gives it before the deadline; TimeoutError otherwise (it is cancelled,
        as asyncio.timeout cancels it: the current task is, and the cancellation is taken back)."""
        task = asyncio.current_task()
        assert task is not None, "a Deadline bounds awaits in a task"
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = self.clock.call_later(self.at - self.clock.now(), expire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()
