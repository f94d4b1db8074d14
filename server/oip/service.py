"""The Open Inference Protocol servicer (`inference.GRPCInferenceService`): moves messages between the
wire and the InferencePlane, nothing more. Timing, counting, status codes and the stream cap are the
interceptor's (server/calls.py); ModelStreamInfer's bounded loop is shared with seqserve.v1 (server/streams.py).

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer,
ModelStreamInfer, ModelStatistics, RepositoryIndex. Triton's other methods (ModelConfig, repository
load/unload, shared memory, trace and log settings) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from seqserve.oip import grpc_service_pb2 as pb
from seqserve.oip import grpc_service_pb2_grpc as pb_grpc

from ..streams import StreamBounds, answer_stream
from .plane import InferCall, InferencePlane

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
Context = grpc.aio.ServicerContext
FINAL_RESPONSE = "triton_final_response"  # every streamed answer is its request's only one


def add_inference_service(servicer: InferenceService, server: grpc.aio.Server) -> None:
    """The generated registration: the server's interceptor guards its deserializers (server/admission.py),
    so bytes that do not decode are answered INVALID_ARGUMENT, as on seqserve.v1."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


@dataclass(frozen=True)
class StreamedInfer:
    """A request of a ModelStreamInfer (server/streams.py's `Admitted`), answered as the stream's message."""

    plane: InferencePlane
    call: InferCall

    @property
    def answer_bytes(self) -> int:
        return self.call.answer_bytes

    def start(self) -> asyncio.Future[pb.ModelInferResponse]:
        return asyncio.ensure_future(self.plane.run(self.call))  # tasks start in the order read


def stream_answer(request: pb.ModelInferRequest, call: StreamedInfer,
                  response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    """The answer of a request of a stream: its request's only one."""
    response.parameters[FINAL_RESPONSE].bool_param = True
    return pb.ModelStreamInferResponse(infer_response=response)


def stream_error(request: pb.ModelInferRequest, code: grpc.StatusCode, message: str) -> pb.ModelStreamInferResponse:
    """The in-band answer of a request of a stream that failed (the stream goes on); it carries the
    request's id, so a client can tell which request failed."""
    return pb.ModelStreamInferResponse(
        error_message=f"{code.name}: {message}",
        infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                              id=request.id))


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: InferencePlane, bounds: StreamBounds) -> None:
        self.plane = plane
        self.bounds = bounds  # ModelStreamInfer's: answers in flight and their bytes

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return self.plane.server_live()

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return self.plane.server_ready()

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return self.plane.model_ready(request)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return self.plane.server_metadata()

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        return self.plane.model_metadata(request)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: Context) -> pb.ModelStatisticsResponse:
        return self.plane.model_statistics(request)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: Context) -> pb.RepositoryIndexResponse:
        return self.plane.repository_index(request)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await self.plane.infer(request)

    def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                         context: Context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently as they are read and are answered as each completes (the requests of
        one sequence in order)."""
        return answer_stream(requests, lambda request: StreamedInfer(self.plane, self.plane.admit(request)),
                             stream_answer, stream_error, self.bounds)
