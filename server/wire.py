"""Method handlers built so that request bytes which do not decode are answered, for every service served.

A generated `add_..._to_server` deserializes requests with `X.FromString`.
Bytes that are not a valid message (truncated, a bad varint, bad UTF-8 in a string field, noise)
make it raise inside grpc, which logs a traceback at error level and answers UNKNOWN: any client
could flood the log. Here each request deserializer returns an `Undecodable` instead, and each
method answers it before the servicer sees it:

- a unary call (ListModels, GetModel, Encode) with INVALID_ARGUMENT;
- a stream (EncodeStream, StreamSequence) ends at the bad message with INVALID_ARGUMENT, once the
  answers to the requests read before it are sent (a message that does not decode has no
  request_id to tag an in-band error with).

Each one is counted in seqserve_requests_total{code="INVALID_ARGUMENT"} and logged as one short
warning line, at most DECODE_LOG_BURST of them per DECODE_LOG_PERIOD_S seconds; the next line
says how many were left out.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from .errors import EXCERPT_CHARS, InvalidInput, ServingError, bounded, status_of
from .metrics import Metrics

log = logging.getLogger(__name__)
DECODE_LOG_BURST = 5  # log lines about undecodable requests...
DECODE_LOG_PERIOD_S = 10.0  # ...per this many seconds; the rest are counted


@dataclass(frozen=True)
class Undecodable:
    """Request bytes that are not a valid `message`; what the deserializer hands on instead."""

    message: str  # the expected type's full name, e.g. seqserve.v1.EncodeRequest
    size: int  # bytes received
    reason: str  # what the protobuf parser said

    def error(self) -> InvalidInput:
        return InvalidInput("request", f"{self.size} bytes are not a valid {self.message} message ({self.reason})")


def deserializer(message_class: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """`message_class.FromString`, returning an Undecodable where the bytes do not parse."""
    return never_raising(message_class.FromString, message_class.DESCRIPTOR.full_name)


def never_raising(parse: Callable[[bytes], Any], name: str) -> Callable[[bytes], Any]:
    """`parse`, returning an Undecodable (naming `name`) where it raises."""

    def safe(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # whatever the parser makes of a client's bytes is the client's problem
            reason = str(exc).rpartition(": ")[2] or type(exc).__name__
            return Undecodable(name, len(data), bounded(reason, EXCERPT_CHARS))

    return safe


class RateLimitedLog:
    """At most `burst` lines per `period` seconds; lines over that are counted and the count is
    reported (`suppressed`) with the next line logged."""

    def __init__(self, logger: logging.Logger, burst: int = DECODE_LOG_BURST, period: float = DECODE_LOG_PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.burst, self.period, self.clock = logger, burst, period, clock
        self.window_start = -period
        self.lines = 0
        self.suppressed = 0

    def warning(self, message: str, **fields: object) -> None:
        now = self.clock()
        if now - self.window_start >= self.period:
            self.window_start, self.lines = now, 0
        if self.lines >= self.burst:
            self.suppressed += 1
            return
        self.lines += 1
        self.logger.warning(message, extra={**fields, "suppressed": self.suppressed})
        self.suppressed = 0


async def responses_of(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour, which is either an async generator or a coroutine
    that writes them itself with `context.write` (as grpcio-health-checking's Watch does)."""
    if inspect.isasyncgen(result):
        async for response in result:
            yield response
    else:
        await result


class MethodWire:
    """One method's handler: the servicer's behaviour behind a deserializer that never raises."""

    def __init__(self, method: str, behaviour: Callable, metrics: Metrics, decode_log: RateLimitedLog) -> None:
        self.method, self.behaviour, self.metrics, self.decode_log = method, behaviour, metrics, decode_log

    def refuse(self, bad: Undecodable, context: grpc.aio.ServicerContext) -> InvalidInput:
        """Count and log an undecodable request; returns the error to answer it with."""
        self.metrics.rpc(self.method, grpc.StatusCode.INVALID_ARGUMENT.name)[0].inc()
        self.decode_log.warning("undecodable request", method=self.method, bytes=bad.size, error=bad.reason,
                                peer=context.peer())
        return bad.error()

    async def unary(self, request: Message | Undecodable, context: grpc.aio.ServicerContext) -> Message:
        if isinstance(request, Undecodable):
            await context.abort(*status_of(self.refuse(request, context)))
        return await self.behaviour(request, context)

    async def unary_stream(self, request: Message | Undecodable,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        if isinstance(request, Undecodable):
            await context.abort(*status_of(self.refuse(request, context)))
        async for response in responses_of(self.behaviour(request, context)):
            yield response

    async def stream(self, requests: AsyncIterator[Message | Undecodable],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        try:
            async for response in responses_of(self.behaviour(self._decoded(requests, context), context)):
                yield response
        except ServingError as exc:  # raised by _decoded, through the servicer's reads
            await context.abort(*status_of(exc))

    async def _decoded(self, requests: AsyncIterator[Message | Undecodable],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        async for request in requests:
            if isinstance(request, Undecodable):
                raise self.refuse(request, context)
            yield request


def guard(handler: grpc.RpcMethodHandler, method: str, metrics: Metrics,
          decode_log: RateLimitedLog) -> grpc.RpcMethodHandler:
    """Another service's handler (health, reflection) behind a deserializer that never raises."""
    codecs: dict[str, Any] = {"request_deserializer": never_raising(handler.request_deserializer, method),
                              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        wire = MethodWire(method, handler.unary_unary, metrics, decode_log)
        return grpc.unary_unary_rpc_method_handler(wire.unary, **codecs)
    if handler.unary_stream:
        wire = MethodWire(method, handler.unary_stream, metrics, decode_log)
        return grpc.unary_stream_rpc_method_handler(wire.unary_stream, **codecs)
    if handler.stream_stream:
        wire = MethodWire(method, handler.stream_stream, metrics, decode_log)
        return grpc.stream_stream_rpc_method_handler(wire.stream, **codecs)
    return handler  # client-streaming, unary answer: no such method is served here
