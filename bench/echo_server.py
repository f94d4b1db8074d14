"""A no-compute seqserve: the same gRPC service and messages, answered without running a model.

    python -m bench.echo_server --model-repository model_repository --port 0

It serves `seqserve.v1.SeqserveService` on grpc.aio exactly as the real server does (same message
size options, same generated servicer base), parses every request, and answers each sequence
with a precomputed `SequenceResult` of the size the real server would send for that model,
sequence length and set of requested outputs. What it costs per call is the gRPC/protobuf
stack alone: the `echo` of the serving ceiling  1 / (1/ort_best + 1/echo).

Prints one JSON line {"msg": "serving", "port": N} to stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np

from seqserve.channel import MAX_MESSAGE_BYTES
from seqserve.contract import Architecture
from seqserve.repository import latest_version, scan_repository
from seqserve.server.v1.codec import DEFAULT_OUTPUTS, stream_default_outputs
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc


class EchoModel:
    """Templates of one model's answers, by (sequence length, requested outputs)."""

    def __init__(self, name: str, version: int, arch: Architecture, labels: list[str]) -> None:
        self.name, self.version, self.arch = name, version, arch
        self.labels = labels or [str(i) for i in range(arch.num_classes)]
        self._results: dict[tuple[int, frozenset[int]], pb.SequenceResult] = {}

    def result(self, steps: int, outputs: frozenset[int]) -> pb.SequenceResult:
        key = (steps, outputs)
        if key not in self._results:
            self._results[key] = self._build(steps, outputs)
        return self._results[key]

    def _build(self, steps: int, outputs: frozenset[int]) -> pb.SequenceResult:
        a = self.arch
        rng = np.random.default_rng(steps)
        width = a.directions * a.hidden_size

        def tensor(*shape: int) -> np.ndarray:
            return rng.standard_normal(shape).astype(np.float32)

        msg = pb.SequenceResult(label=self.labels[0], label_index=0)
        to_tensor(tensor(a.num_classes), msg.probabilities)
        if pb.OUTPUT_LOGITS in outputs:
            to_tensor(tensor(a.num_classes), msg.logits)
        if pb.OUTPUT_OUTPUTS in outputs:
            to_tensor(tensor(steps, width), msg.outputs)
        if pb.OUTPUT_HIDDEN in outputs:
            to_tensor(tensor(a.num_layers * a.directions, a.hidden_size), msg.h_n)
            if a.has_cell_state:
                to_tensor(tensor(a.num_layers * a.directions, a.hidden_size), msg.c_n)
        if pb.OUTPUT_ATTENTION in outputs and a.has_attention:
            to_tensor(tensor(steps), msg.attention)
            to_tensor(tensor(width), msg.context)
        if pb.OUTPUT_STEP_LOGITS in outputs and a.step_logits:
            to_tensor(tensor(steps, a.num_classes), msg.step_logits)
        return msg

    def state(self, steps_seen: int) -> pb.State:
        a = self.arch
        state = pb.State(model=self.name, version=self.version, steps_seen=steps_seen)
        to_tensor(np.zeros((a.num_layers, a.hidden_size), np.float32), state.h)
        if a.has_cell_state:
            to_tensor(np.zeros((a.num_layers, a.hidden_size), np.float32), state.c)
        return state


def steps_of(tensor: pb.Tensor) -> int:
    return int(tensor.shape[0]) if len(tensor.shape) else 0


class EchoService(pb_grpc.SeqserveServiceServicer):
    def __init__(self, models: dict[str, EchoModel]) -> None:
        self.models = models

    def _model(self, name: str) -> EchoModel:
        return self.models.get(name) or next(iter(self.models.values()))

    def _encode(self, request: pb.EncodeRequest) -> pb.EncodeResponse:
        model = self._model(request.model)
        outputs = frozenset(request.outputs) or DEFAULT_OUTPUTS
        response = pb.EncodeResponse(model=model.name, version=model.version)
        for seq in request.sequences:
            result = response.results.add()
            result.CopyFrom(model.result(steps_of(seq.steps), outputs))
            result.id = seq.id
        return response

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=m.name, version=m.version)
                                             for m in self.models.values()])

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        model = self._model(request.model)
        return pb.GetModelResponse(model=pb.ModelInfo(name=model.name, version=model.version))

    async def Encode(self, request: pb.EncodeRequest, context) -> pb.EncodeResponse:
        return self._encode(request)

    async def EncodeStream(self, request_iterator: AsyncIterator[pb.EncodeStreamRequest], context) -> AsyncIterator:
        async for tagged in request_iterator:
            yield pb.EncodeStreamResponse(request_id=tagged.request_id, response=self._encode(tagged.request))

    async def StreamSequence(self, request_iterator: AsyncIterator[pb.StreamSequenceRequest], context) -> AsyncIterator:
        model: EchoModel | None = None
        outputs, seen = frozenset[int](), 0
        async for request in request_iterator:
            if model is None:
                model = self._model(request.model)
                outputs = frozenset(request.outputs) or stream_default_outputs(model.arch)  # as the data plane
            steps = steps_of(request.steps)
            seen += steps
            if not model.arch.streaming and not request.end:
                continue
            response = pb.StreamSequenceResponse(steps_seen=seen, final=request.end)
            response.result.CopyFrom(model.result(steps if model.arch.streaming else seen, outputs))
            if model.arch.streaming:
                response.state.CopyFrom(model.state(seen))
            yield response


def load_models(repository: Path) -> dict[str, EchoModel]:
    versions, _ = scan_repository(repository, verify_hash=False)
    models = {}
    for name in sorted({v.name for v in versions}):
        v = latest_version(repository, name)
        models[name] = EchoModel(name, v.version, v.architecture, v.class_labels)
    return models


async def serve(repository: Path, host: str, port: int) -> None:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    pb_grpc.add_SeqserveServiceServicer_to_server(EchoService(load_models(repository)), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(json.dumps({"msg": "serving", "port": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                        help="repository whose models' architectures set the answer sizes")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.model_repository, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
