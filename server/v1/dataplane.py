"""What seqserve.v1 does, free of gRPC plumbing: describe models, encode sequences, run streams.

The servicer (server/v1/service.py) only moves messages; server/calls.py maps errors to status codes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from seqserve.contract import Architecture
from seqserve.inference import PER_STATE, Packed, PackedOutputs, SequenceOutputs
from seqserve.metadata import ParitySummary
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb

from ..config import ServerConfig
from ..errors import FailedPrecondition, InvalidInput, LimitExceeded, excerpt
from ..registry import ModelRegistry, ServedModel
from ..validation import check_sequence_count
from .codec import (
    MAX_STEPS_SEEN,
    AnswerSize,
    check_state_origin,
    check_steps_seen,
    check_steps_shape,
    check_version,
    decode_outputs,
    decode_state,
    decode_steps,
    encode_result,
    stream_default_outputs,
    tensors_of,
)
from .packed import encode_packed, packed_ids, packed_lengths, unpack


def parity_summary(parity: ParitySummary) -> pb.ParitySummary:
    return pb.ParitySummary(passed=parity.passed, max_abs_error=parity.max_abs_error, atol=parity.atol,
                            rtol=parity.rtol, cases=parity.cases)


class DataPlane:
    def __init__(self, registry: ModelRegistry, config: ServerConfig) -> None:
        self.registry = registry
        self.config = config

    def model_info(self, model: ServedModel) -> pb.ModelInfo:
        version = model.runtime.version
        arch = model.runtime.arch

        def tensor_info(spec) -> pb.TensorInfo:
            return pb.TensorInfo(name=spec.name, dtype=spec.dtype, shape=[str(d) for d in spec.shape],
                                 description=spec.description)

        return pb.ModelInfo(
            name=model.name,
            version=model.version,
            versions=self.registry.versions(model.name),
            description=version.description,
            cell=arch.cell,
            bidirectional=arch.bidirectional,
            layers=arch.num_layers,
            hidden_size=arch.hidden_size,
            input_features=arch.input_size,
            attention=arch.attention,
            streaming=arch.streaming,
            class_labels=version.class_labels,
            inputs=[tensor_info(s) for s in version.inputs],
            outputs=[tensor_info(s) for s in version.outputs],
            parity=parity_summary(version.parity) if version.parity is not None else None,
            test_accuracy=version.test_accuracy or 0.0,
            precision=version.precision,
        )

    def list_models(self) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self.model_info(self.registry.get(n)) for n in self.registry.names()])

    def find(self, name: str, version: int) -> ServedModel:
        """The model version a request names (version 0: the latest); its name echoed only as an excerpt."""
        check_version(version)
        return self.registry.get(name, version)

    def get_model(self, request: pb.GetModelRequest) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=self.model_info(self.find(request.model, request.version)))

    def prepare_encode(self, request: pb.EncodeRequest) -> EncodeCall:
        """Validate a request from its declared shapes, its answer's size included (nothing is queued for
        a request whose answer would be over max_message_bytes); `EncodeCall.start` queues it."""
        model = self.find(request.model, request.version)
        arch = model.runtime.arch
        outputs = decode_outputs(request.outputs, arch)
        lengths, ids, decode = self._sequences_of(request, arch)
        estimate = answer_size(model, outputs)
        size = estimate.encode_response(lengths, (len(i.encode()) for i in ids))
        estimate.check(size, self.config.max_message_bytes,
                       f"send fewer sequences per call (this one has {len(lengths)})")
        return EncodeCall(request, model, outputs, ids, size, decode)

    def _sequences_of(
        self, request: pb.EncodeRequest, arch: Architecture,
    ) -> tuple[list[int], list[str], Callable[[], Packed]]:
        """A request's sequence lengths and ids, checked against the limits from the declared shapes
        alone, and how to decode the sequences themselves (done once the answer's size is known to fit)."""
        if request.HasField("packed"):
            if request.sequences:
                raise InvalidInput("packed", "send the sequences either in `sequences` or in `packed`, not both")
            lengths = packed_lengths(request.packed, arch, self.config)  # (B,)
            return lengths.tolist(), packed_ids(request.packed), lambda: unpack(request.packed, lengths)
        check_sequence_count(len(request.sequences), "sequences", self.config, "no sequences in the request")
        fields = [f"sequences[{i}].steps" for i in range(len(request.sequences))]
        lengths = [check_steps_shape(seq.steps, field, arch, self.config)
                   for seq, field in zip(request.sequences, fields, strict=True)]
        return lengths, [seq.id for seq in request.sequences], lambda: Packed.of([
            decode_steps(seq.steps, field, arch, self.config)
            for seq, field in zip(request.sequences, fields, strict=True)],
            arch.input_size)

    async def encode(self, request: pb.EncodeRequest) -> pb.EncodeResponse:
        call = self.prepare_encode(request)
        answers = call.start()
        try:
            return call.response(await answers)
        except asyncio.CancelledError:
            answers.cancel()  # the caller went away: its sequences leave the queue
            raise


@functools.lru_cache(maxsize=1024)
def answer_size(model: ServedModel, outputs: frozenset[int]) -> AnswerSize:
    """The answer-size estimator of a model version and a set of outputs (built once per pair)."""
    return AnswerSize.of(model.runtime.arch, outputs, model.runtime.version.class_labels, model.name)


@dataclass(frozen=True)
class EncodeCall:
    """A validated Encode request: `start` decodes its sequences (checking them finite) and queues them."""

    request: pb.EncodeRequest
    model: ServedModel
    outputs: frozenset[int]
    ids: list[str]
    answer_bytes: int  # an upper bound of the EncodeResponse's bytes
    sequences: Callable[[], Packed]

    def start(self) -> asyncio.Future[PackedOutputs]:
        return self.model.batcher.enqueue(self.sequences(), tensors_of(self.outputs)).future

    def response(self, answers: PackedOutputs, out: pb.EncodeResponse | None = None) -> pb.EncodeResponse:
        """The answer; filled into `out` when given (a field of a bigger message: no copy)."""
        response = out if out is not None else pb.EncodeResponse()
        response.model, response.version = self.model.name, self.model.version
        labels = self.model.runtime.version.class_labels
        if self.request.packed_results:
            encode_packed(answers, self.outputs, labels, self.ids, response.packed)
            return response
        for i, seq_id in enumerate(self.ids):
            encode_result(answers.sequence(i), self.outputs, labels, seq_id, response.results.add())
        return response


class SequenceStream:
    """One StreamSequence call: a long sequence arriving in chunks.

    Unidirectional models answer each chunk from the state the previous one left (or the
    client's initial_state), so state can live with the client. Bidirectional models buffer
    the chunks (up to max_stream_buffer_steps) and answer once, when the client marks the end.
    """

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.config = plane.config
        self.model: ServedModel | None = None
        self.outputs: frozenset[int] = frozenset()
        self.size: AnswerSize | None = None  # the answers' size, once the model is known
        self.h: np.ndarray | None = None  # (L, H)
        self.c: np.ndarray | None = None  # (L, H)
        self.steps_seen = 0
        self.buffer: list[np.ndarray] = []  # non-empty chunks, bidirectional models
        self.buffered_steps = 0
        self.ended = False
        self.chunks = 0

    def _open(self, request: pb.StreamSequenceRequest) -> None:
        if not request.model:
            raise InvalidInput("model", "the first message of a stream must name the model")
        self.model = self.plane.find(request.model, request.version)
        arch = self.model.runtime.arch
        self.outputs = decode_outputs(request.outputs or stream_default_outputs(arch), arch)
        self.size = answer_size(self.model, self.outputs)
        if request.HasField("initial_state"):
            self._continue_from(request.initial_state)

    def _continue_from(self, state: pb.State) -> None:
        """Start from a state an earlier stream handed out (see `check_state_origin`)."""
        check_state_origin(state, self.model.name, self.model.version, "initial_state")
        self.h, self.c = decode_state(state, self.model.runtime.arch, "initial_state")
        self.steps_seen = check_steps_seen(state.steps_seen, "initial_state.steps_seen")

    def _check_later(self, request: pb.StreamSequenceRequest) -> None:
        """A message after the first may repeat the model and version, not change them."""
        check_version(request.version)
        if request.model and request.model != self.model.name:
            raise InvalidInput("model", f"stream is for {self.model.name!r}, chunk names {excerpt(request.model)}")
        if request.version and request.version != self.model.version:
            raise InvalidInput("version", f"stream runs version {self.model.version}, chunk names {request.version}")
        if request.HasField("initial_state"):
            raise InvalidInput("initial_state", "only the first message of a stream may carry a state")

    async def handle(self, request: pb.StreamSequenceRequest) -> pb.StreamSequenceResponse | None:
        """Process one chunk; returns the answer, or None while a bidirectional model buffers."""
        if self.ended:
            raise FailedPrecondition("end: the stream's sequence already ended; open a new stream")
        if self.model is None:
            self._open(request)
        else:
            self._check_later(request)
        field = f"chunk[{self.chunks}].steps"
        self.chunks += 1
        if self.chunks > self.config.max_stream_chunks:
            raise LimitExceeded("chunks", self.chunks, self.config.max_stream_chunks, "max_stream_chunks")
        arch = self.model.runtime.arch
        steps = decode_steps(request.steps, field, arch, self.config, allow_empty=True)
        self._count(steps.shape[0])
        self.ended = request.end
        if arch.streaming:
            self.size.check(self.size.stream_response(len(steps)), self.config.max_message_bytes,
                            "send shorter chunks")
            return await self._answer_chunk(steps)
        self._buffer(steps)
        return await self._answer_sequence() if self.ended else None

    def _count(self, steps: int) -> None:
        if self.steps_seen + steps > MAX_STEPS_SEEN:
            raise InvalidInput("initial_state.steps_seen", f"{self.steps_seen} steps seen and {steps} more would "
                                                           f"pass the most a stream counts, 2**62")
        self.steps_seen += steps

    @property
    def open_at_close(self) -> bool:
        """A bidirectional model's sequence the client closed without `end`: finish() answers it."""
        return self.model is not None and not self.ended and not self.model.runtime.arch.streaming

    async def finish(self) -> pb.StreamSequenceResponse:
        """The client closed its side: that ends the sequence, as `end` would have."""
        self.ended = True
        return await self._answer_sequence()

    def _buffer(self, steps: np.ndarray) -> None:
        """Keep a bidirectional model's chunk until the end; O(chunk), whatever is buffered already."""
        buffered = self.buffered_steps + len(steps)
        if buffered > self.config.max_stream_buffer_steps:
            raise LimitExceeded("buffered steps", buffered, self.config.max_stream_buffer_steps,
                                "max_stream_buffer_steps")
        self.size.check(self.size.stream_response(buffered), self.config.max_message_bytes,
                        "send a shorter sequence")
        self.buffered_steps = buffered
        if len(steps):
            self.buffer.append(steps)

    async def _answer_sequence(self) -> pb.StreamSequenceResponse:
        if not self.buffer:
            raise InvalidInput("steps", "empty sequence: the stream ended with no steps")
        steps = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]  # (T, F)
        answers = await self.model.batcher.submit(Packed.one(steps), tensors_of(self.outputs))
        return self._response(answers.sequence(0))

    async def _answer_chunk(self, steps: np.ndarray) -> pb.StreamSequenceResponse:
        fetch = tensors_of(self.outputs) | PER_STATE  # the state goes back to the client with every answer
        result = (await self.model.batcher.submit(Packed.one(steps, self.h, self.c), fetch)).sequence(0)
        self.h, self.c = result["h_n"], result.get("c_n")
        response = self._response(result)
        state = response.state
        state.model, state.version, state.steps_seen = self.model.name, self.model.version, self.steps_seen
        to_tensor(self.h, state.h)
        if self.c is not None:
            to_tensor(self.c, state.c)
        return response

    def _response(self, result: SequenceOutputs) -> pb.StreamSequenceResponse:
        response = pb.StreamSequenceResponse(steps_seen=self.steps_seen, final=self.ended)
        encode_result(result, self.outputs, self.model.runtime.version.class_labels, out=response.result)
        return response
