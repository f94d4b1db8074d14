"""The Open Inference Protocol servicer (`inference.GRPCInferenceService`): moves messages between the
wire and the InferencePlane; failures become status codes through `server.errors.status_of`.

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer,
ModelStreamInfer, ModelStatistics, RepositoryIndex. Triton's other methods (ModelConfig, repository
load/unload, shared memory, trace and log settings) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from seqserve.oip import grpc_service_pb2 as pb
from seqserve.oip import grpc_service_pb2_grpc as pb_grpc

from ..calls import Calls
from ..config import ServerConfig
from .plane import InferencePlane

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
Context = grpc.aio.ServicerContext
FINAL_RESPONSE = "triton_final_response"  # every streamed answer is its request's only one


def add_inference_service(servicer: InferenceService, server: grpc.aio.Server) -> None:
    """The generated registration: the server's interceptor guards its deserializers (server/admission.py),
    so bytes that do not decode are answered INVALID_ARGUMENT, as on seqserve.v1."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: InferencePlane, calls: Calls, config: ServerConfig) -> None:
        self.plane = plane
        self.calls = calls  # shared with seqserve.v1's servicer: one count of open streams for both
        self.config = config

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return await self.calls.answer("ServerLive", context, self.plane.server_live)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return await self.calls.answer("ServerReady", context, self.plane.server_ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return await self.calls.answer("ModelReady", context, lambda: self.plane.model_ready(request))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: Context) -> pb.ServerMetadataResponse:
        return await self.calls.answer("ServerMetadata", context, self.plane.server_metadata)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: Context) -> pb.ModelMetadataResponse:
        return await self.calls.answer("ModelMetadata", context, lambda: self.plane.model_metadata(request))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: Context) -> pb.ModelStatisticsResponse:
        return await self.calls.answer("ModelStatistics", context, lambda: self.plane.model_statistics(request))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: Context) -> pb.RepositoryIndexResponse:
        return await self.calls.answer("RepositoryIndex", context, lambda: self.plane.repository_index(request))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await self.calls.answer("ModelInfer", context, lambda: self.plane.infer(request))

    async def _stream_answer(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        """One request of a stream, answered in-band: its response, or its error (the stream goes on).
        An error's infer_response carries the request's id, so a client can tell which request failed."""
        started = time.perf_counter()
        try:
            response = await self.plane.infer(request)
        except Exception as exc:
            code, message = self.calls.failed("ModelStreamInfer", exc, started)
            return pb.ModelStreamInferResponse(
                error_message=f"{code.name}: {message}",
                infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                      model_version=request.model_version, id=request.id))
        self.calls.record("ModelStreamInfer", grpc.StatusCode.OK, started)
        response.parameters[FINAL_RESPONSE].bool_param = True
        return pb.ModelStreamInferResponse(infer_response=response)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: Context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run concurrently as they are read and are answered as each completes (the requests of
        one sequence in order). Back-pressure: at most max_stream_in_flight requests are read and not yet
        answered; at the cap reading pauses, so a client that stops reading answers stops being read."""
        await self.calls.open_stream(context)
        answers: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()  # done tasks; None: reading ended
        slots = asyncio.Semaphore(self.config.max_stream_in_flight)
        tasks: set[asyncio.Task] = set()  # read, not yet answered

        async def read_requests() -> None:
            requests = aiter(request_iterator)
            try:
                while True:
                    await slots.acquire()  # a slot before reading: the cap holds what is read
                    try:
                        request = await anext(requests)
                    except StopAsyncIteration:
                        break
                    task = asyncio.create_task(self._stream_answer(request))  # tasks start in the order read
                    tasks.add(task)
                    task.add_done_callback(answers.put_nowait)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            reading = True
            while reading or tasks:
                done = await answers.get()
                if done is None:
                    reading = False
                    continue
                tasks.discard(done)
                yield done.result()
                slots.release()
            await reader  # re-raises a failure to read the requests
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()
            self.calls.close_stream()
