"""The gRPC servicer of seqserve.v1: moves messages between the wire and the DataPlane.

Every call goes through `server.calls.Calls` (shared with the Open Inference Protocol servicer):
timing, counting, the stream cap, and `server.errors.status_of`, the one place that picks a code.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from ..calls import Calls
from ..config import ServerConfig
from ..metrics import Metrics
from ..wire import MethodWire, RateLimitedLog, deserializer
from .dataplane import DataPlane, PendingEncode, SequenceStream

SERVICE = pb.DESCRIPTOR.services_by_name["SeqserveService"]


class SeqserveService(pb_grpc.SeqserveServiceServicer):
    def __init__(self, plane: DataPlane, calls: Calls, config: ServerConfig) -> None:
        self.plane = plane
        self.calls = calls  # timing, counting, status mapping and the stream cap, shared with the v2 servicer
        self.config = config

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return await self.calls.answer("ListModels", context, self.plane.list_models)

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        return await self.calls.answer("GetModel", context, lambda: self.plane.get_model(request))

    async def Encode(self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext) -> pb.EncodeResponse:
        return await self.calls.answer("Encode", context, lambda: self.plane.encode(request))

    def _tagged_error(self, request_id: str, exc: BaseException, started: float) -> pb.EncodeStreamResponse:
        code, message = self.calls.failed("EncodeStream", exc, started)
        return pb.EncodeStreamResponse(request_id=request_id, error=pb.Error(code=code.name, message=message))

    async def EncodeStream(
        self, request_iterator: AsyncIterator[pb.EncodeStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EncodeStreamResponse]:
        """Each request is queued as it arrives and answered from its job's done-callback, as it completes.

        Back-pressure: a request takes one of max_stream_in_flight slots when it is read and gives it
        back when its answer has been sent, so a client that stops reading answers stops being read
        (gRPC flow control then holds its writes) instead of piling answers up in server memory.
        """
        await self.calls.open_stream(context)
        answers: asyncio.Queue[pb.EncodeStreamResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.config.max_stream_in_flight)
        jobs: set[asyncio.Future] = set()
        reading = True

        def answer(pending: PendingEncode, request_id: str, started: float, future: asyncio.Future) -> None:
            jobs.discard(future)
            if not future.cancelled():
                if future.exception() is not None:
                    answers.put_nowait(self._tagged_error(request_id, future.exception(), started))
                else:
                    tagged = pb.EncodeStreamResponse(request_id=request_id)
                    pending.response(future.result(), out=tagged.response)
                    answers.put_nowait(tagged)
                    self.calls.record("EncodeStream", grpc.StatusCode.OK, started)
            if not reading and not jobs:
                answers.put_nowait(None)

        async def read_requests() -> None:
            nonlocal reading
            try:
                requests = aiter(request_iterator)
                while True:
                    await slots.acquire()
                    try:
                        tagged = await anext(requests)
                    except StopAsyncIteration:
                        break
                    started = time.perf_counter()
                    try:
                        pending = self.plane.start_encode(tagged.request)
                    except Exception as exc:
                        answers.put_nowait(self._tagged_error(tagged.request_id, exc, started))
                        continue
                    jobs.add(pending.job.future)
                    pending.job.future.add_done_callback(
                        functools.partial(answer, pending, tagged.request_id, started))
            finally:
                reading = False
                if not jobs:
                    answers.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (response := await answers.get()) is not None:
                yield response
                slots.release()
            await reader  # re-raises a failure to read the requests
        finally:
            reader.cancel()
            for future in list(jobs):
                future.cancel()
            self.calls.close_stream()

    async def StreamSequence(
        self, request_iterator: AsyncIterator[pb.StreamSequenceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamSequenceResponse]:
        await self.calls.open_stream(context)
        stream = SequenceStream(self.plane)
        try:
            async for request in request_iterator:
                response = await self.calls.answer("StreamSequence", context, functools.partial(stream.handle, request))
                if response is not None:
                    yield response
            if stream.open_at_close:
                yield await self.calls.answer("StreamSequence", context, stream.finish)
        finally:
            self.calls.close_stream()


def method_handlers(servicer: object, metrics: Metrics,
                    decode_log: RateLimitedLog) -> dict[str, grpc.RpcMethodHandler]:
    """Every method of seqserve.v1.SeqserveService, by name, served by `servicer`."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        wire = MethodWire(method.name, getattr(servicer, method.name), metrics, decode_log)
        codecs: dict[str, Any] = {"request_deserializer": deserializer(request_class),
                                  "response_serializer": response_class.SerializeToString}
        if not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(wire.unary, **codecs)
        elif method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(wire.stream, **codecs)
        else:
            raise TypeError(f"{method.full_name}: only unary and bidirectional methods are wired")
    return handlers


def add_service(servicer: object, server: grpc.aio.Server, metrics: Metrics, decode_log: RateLimitedLog) -> None:
    """Register `servicer` as seqserve.v1.SeqserveService on `server` (in place of the generated
    add_SeqserveServiceServicer_to_server), with deserializers that never raise."""
    handlers = method_handlers(servicer, metrics, decode_log)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
