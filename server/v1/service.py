"""The gRPC servicer of seqserve.v1: moves messages between the wire and the DataPlane, nothing more.

Timing, counting, status codes and the stream cap are the interceptor's (server/calls.py); EncodeStream's
bounded loop is shared with the Open Inference Protocol (server/streams.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from seqserve.inference import PackedOutputs
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from ..calls import this_call
from ..metrics import Metrics
from ..streams import StreamBounds, answer_stream
from ..wire import MethodWire, RateLimitedLog, deserializer
from .dataplane import DataPlane, EncodeCall, SequenceStream

Context = grpc.aio.ServicerContext
SERVICE = pb.DESCRIPTOR.services_by_name["SeqserveService"]


def stream_answer(request: pb.EncodeStreamRequest, call: EncodeCall,
                  answers: PackedOutputs) -> pb.EncodeStreamResponse:
    """The answer of a request of an EncodeStream, tagged with its request_id."""
    tagged = pb.EncodeStreamResponse(request_id=request.request_id)
    call.response(answers, out=tagged.response)
    return tagged


def stream_error(request: pb.EncodeStreamRequest, code: grpc.StatusCode, message: str) -> pb.EncodeStreamResponse:
    """The in-band answer of a request of an EncodeStream that failed (the stream goes on)."""
    return pb.EncodeStreamResponse(request_id=request.request_id, error=pb.Error(code=code.name, message=message))


class SeqserveService(pb_grpc.SeqserveServiceServicer):
    def __init__(self, plane: DataPlane, bounds: StreamBounds) -> None:
        self.plane = plane
        self.bounds = bounds  # EncodeStream's: answers in flight and their bytes

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        return self.plane.list_models()

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        return self.plane.get_model(request)

    async def Encode(self, request: pb.EncodeRequest, context: Context) -> pb.EncodeResponse:
        return await self.plane.encode(request)

    def EncodeStream(self, requests: AsyncIterator[pb.EncodeStreamRequest],
                     context: Context) -> AsyncIterator[pb.EncodeStreamResponse]:
        """Each request is validated and queued as it is read, and answered as it completes."""
        return answer_stream(requests, lambda tagged: self.plane.prepare_encode(tagged.request), stream_answer,
                             stream_error, self.bounds)

    async def StreamSequence(self, requests: AsyncIterator[pb.StreamSequenceRequest],
                             context: Context) -> AsyncIterator[pb.StreamSequenceResponse]:
        stream = SequenceStream(self.plane)
        tally = this_call()
        async for request in requests:
            started = time.perf_counter()
            response = await stream.handle(request)
            tally.record(grpc.StatusCode.OK, started)
            if response is not None:
                yield response
        if stream.open_at_close:
            started = time.perf_counter()
            response = await stream.finish()
            tally.record(grpc.StatusCode.OK, started)
            yield response


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
