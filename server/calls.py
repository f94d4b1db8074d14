"""What a servicer does around each call: time and count it, turn its failure into a status
(`server.errors.status_of`, the one mapping) and abort with it, and hold streaming calls to
max_concurrent_streams.

One instance serves both servicers (seqserve.v1's and the Open Inference Protocol's), so their
streams count against one max_concurrent_streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from .config import ServerConfig
from .errors import LimitExceeded, status_of
from .metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Calls:
    def __init__(self, metrics: Metrics, config: ServerConfig) -> None:
        self.metrics = metrics
        self.config = config
        self.open_streams = 0

    def record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        """Count one answered call (or stream message) of `method` with `code`, started at `started`."""
        requests, seconds = self.metrics.rpc(method, code.name)
        requests.inc()
        seconds.observe(time.perf_counter() - started)

    def failed(self, method: str, exc: BaseException, started: float) -> tuple[grpc.StatusCode, str]:
        """Count a failure and return the status it maps to; internal errors are logged with their traceback."""
        code, message = status_of(exc)
        self.record(method, code, started)
        if code == grpc.StatusCode.INTERNAL:
            log.error("internal error", exc_info=exc, extra={"method": method})
        return code, message

    async def answer(self, method: str, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T] | T]) -> T:
        """Run one call, count it, and abort with its status if it fails."""
        started = time.perf_counter()
        try:
            result = call()
            if asyncio.iscoroutine(result):
                result = await result
        except asyncio.CancelledError:
            self.record(method, grpc.StatusCode.CANCELLED, started)
            raise
        except Exception as exc:
            await context.abort(*self.failed(method, exc, started))
        self.record(method, grpc.StatusCode.OK, started)
        return result

    async def open_stream(self, context: grpc.aio.ServicerContext) -> None:
        """Count a streaming call in, or refuse it past max_concurrent_streams."""
        if self.open_streams >= self.config.max_concurrent_streams:
            exc = LimitExceeded("streams", self.open_streams + 1, self.config.max_concurrent_streams,
                                "max_concurrent_streams")
            await context.abort(*status_of(exc))
        self.open_streams += 1
        self.metrics.open_streams.inc()

    def close_stream(self) -> None:
        self.open_streams -= 1
        self.metrics.open_streams.dec()
