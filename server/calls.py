"""What happens around every call of seqserve's own services (seqserve.v1 and the Open Inference Protocol),
in one interceptor: time and count it, turn its failure into a status (`server.errors.status_of`, the one
mapping) and abort with it, and hold streaming calls to max_concurrent_streams (one count for both
services). Servicers carry no method names, no try/except and no status codes.

A stream's messages are counted one by one, where they are answered: the stream's `Tally` is the call's
(`this_call()`), set by the interceptor as the stream starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from .config import ServerConfig
from .errors import LimitExceeded, status_of
from .metrics import Metrics
from .wire import responses_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tally:
    """Counts and times the answers of one method (a stream's: each of its messages)."""

    method: str
    metrics: Metrics

    def record(self, code: grpc.StatusCode, started: float) -> None:
        """Count one answer with `code`, started at `started` (time.perf_counter)."""
        requests, seconds = self.metrics.rpc(self.method, code.name)
        requests.inc()
        seconds.observe(time.perf_counter() - started)

    def failed(self, exc: BaseException, started: float) -> tuple[grpc.StatusCode, str]:
        """Count a failure and return the status it maps to; internal errors are logged with their traceback."""
        code, message = status_of(exc)
        self.record(code, started)
        if code == grpc.StatusCode.INTERNAL:
            log.error("internal error", exc_info=exc, extra={"method": self.method})
        return code, message


_CALL: ContextVar[Tally] = ContextVar("seqserve_call")


def this_call() -> Tally:
    """The tally of the streaming call being served (set by CallAccounting as the stream starts)."""
    return _CALL.get()


Handler = grpc.RpcMethodHandler


class CallAccounting(grpc.aio.ServerInterceptor):
    """Every method of `services` (full names), timed, counted and its failures mapped to a status."""

    def __init__(self, metrics: Metrics, config: ServerConfig, services: Iterable[str]) -> None:
        self.metrics = metrics
        self.config = config
        self.prefixes = tuple(f"/{service}/" for service in services)
        self.open_streams = 0
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method -> (handler, accounted)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
                                details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefixes):
            return handler
        known = self._wrapped.get(details.method)
        if known is None or known[0] is not handler:
            tally = Tally(details.method.rpartition("/")[2], self.metrics)
            known = self._wrapped[details.method] = (handler, self._accounted(handler, tally))
        return known[1]

    def _accounted(self, handler: Handler, tally: Tally) -> Handler:
        codecs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, tally), **codecs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(self._stream(handler.stream_stream, tally), **codecs)
        raise TypeError(f"{tally.method}: only unary and bidirectional methods are served")

    def _unary(self, behaviour: Callable, tally: Tally) -> Callable:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = await behaviour(request, context)
            except asyncio.CancelledError:
                tally.record(grpc.StatusCode.CANCELLED, started)
                raise
            except grpc.aio.AbortError:
                raise  # answered already (a request that does not decode, counted where it was refused)
            except Exception as exc:
                await context.abort(*tally.failed(exc, started))
            tally.record(grpc.StatusCode.OK, started)
            return response

        return call

    def _stream(self, behaviour: Callable, tally: Tally) -> Callable:
        async def stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._open_stream(context)
            _CALL.set(tally)
            started = time.perf_counter()  # of the message being answered
            try:
                async for response in responses_of(behaviour(requests, context)):
                    yield response
                    started = time.perf_counter()
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await context.abort(*tally.failed(exc, started))
            finally:
                self._close_stream()

        return stream

    async def _open_stream(self, context: grpc.aio.ServicerContext) -> None:
        """Count a streaming call in, or refuse it past max_concurrent_streams."""
        if self.open_streams >= self.config.max_concurrent_streams:
            exc = LimitExceeded("streams", self.open_streams + 1, self.config.max_concurrent_streams,
                                "max_concurrent_streams")
            await context.abort(*status_of(exc))
        self.open_streams += 1
        self.metrics.open_streams.inc()

    def _close_stream(self) -> None:
        self.open_streams -= 1
        self.metrics.open_streams.dec()
