"""Typed Python client for seqserve: numpy in, numpy out.

    with SeqserveClient("localhost:50051") as client:
        [result] = client.encode("jv_bilstm_attn", [steps])        # steps: (T, F) float32
        print(result.label, result.probabilities)
        for update in client.stream_sequence("jv_lstm_stream", chunks):
            print(update.steps_seen, update.result.label)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from seqserve.channel import Security, open_channel
from seqserve.outputs import Layout, layout_of
from seqserve.tensors import from_tensor, to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

# PackedResults' tensors; per-step ones are cut by lengths, the rest have one row a sequence (seqserve.outputs).
PACKED_TENSORS = ("probabilities", "logits", "outputs", "h_n", "c_n", "attention", "context", "step_logits")
OUTPUTS = {
    "outputs": pb.OUTPUT_OUTPUTS,
    "hidden": pb.OUTPUT_HIDDEN,
    "attention": pb.OUTPUT_ATTENTION,
    "logits": pb.OUTPUT_LOGITS,
    "step_logits": pb.OUTPUT_STEP_LOGITS,
}


@dataclass(frozen=True)
class EncodeResult:
    """One sequence's results; tensors not requested are None."""

    id: str
    label: str
    label_index: int
    probabilities: np.ndarray  # (C,)
    logits: np.ndarray | None = None  # (C,)
    outputs: np.ndarray | None = None  # (T, D*H)
    h_n: np.ndarray | None = None  # (L*D, H)
    c_n: np.ndarray | None = None  # (L*D, H)
    attention: np.ndarray | None = None  # (T,)
    context: np.ndarray | None = None  # (D*H,)
    step_logits: np.ndarray | None = None  # (T, C)

    @classmethod
    def from_proto(cls, msg: pb.SequenceResult) -> EncodeResult:
        def tensor(name: str) -> np.ndarray | None:
            return from_tensor(getattr(msg, name), name) if msg.HasField(name) else None

        return cls(
            id=msg.id, label=msg.label, label_index=msg.label_index,
            probabilities=from_tensor(msg.probabilities, "probabilities"),
            logits=tensor("logits"), outputs=tensor("outputs"), h_n=tensor("h_n"), c_n=tensor("c_n"),
            attention=tensor("attention"), context=tensor("context"), step_logits=tensor("step_logits"),
        )

    @classmethod
    def from_packed(cls, msg: pb.PackedResults) -> list[EncodeResult]:
        """Every sequence's results from one PackedResults: views into its tensors, cut per sequence."""
        cuts = np.cumsum(msg.lengths)[:-1]  # where each sequence's steps end in the per-step tensors

        def rows(name: str) -> list[np.ndarray | None]:
            if not msg.HasField(name):
                return [None] * len(msg.ids)
            value = from_tensor(getattr(msg, name), name)  # (sum T_i, ...) or (B, ...)
            return np.split(value, cuts) if layout_of(name) is Layout.PER_STEP else list(value)

        columns = {name: rows(name) for name in PACKED_TENSORS}
        return [
            cls(id=msg.ids[i], label=msg.labels[i], label_index=msg.label_indices[i],
                **{name: column[i] for name, column in columns.items()})
            for i in range(len(msg.ids))
        ]


def results_of(response: pb.EncodeResponse) -> list[EncodeResult]:
    """An EncodeResponse's results in request order, whichever form it came in."""
    if response.HasField("packed"):
        return EncodeResult.from_packed(response.packed)
    return [EncodeResult.from_proto(r) for r in response.results]


@dataclass(frozen=True)
class StreamUpdate:
    """The answer to one chunk of a StreamSequence."""

    result: EncodeResult
    steps_seen: int
    final: bool
    state: pb.State | None  # pass as initial_state to continue the sequence (unidirectional models)


class StreamError(Exception):
    """A request of an EncodeStream failed; the stream itself goes on."""

    def __init__(self, request_id: str, code: str, message: str) -> None:
        super().__init__(f"{request_id}: {code}: {message}")
        self.request_id, self.code, self.message = request_id, code, message


def output_values(outputs: Iterable[str] | None) -> list[int]:
    if outputs is None:
        return []
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"outputs: unknown {unknown}; choose from {sorted(OUTPUTS)}")
    return [OUTPUTS[o] for o in outputs]


def encode_request(
    model: str, sequences: Sequence[np.ndarray], ids: Sequence[str] | None = None,
    outputs: Iterable[str] | None = None, version: int = 0, packed: bool = False,
) -> pb.EncodeRequest:
    """An Encode request for (T_i, F) sequences: one message per sequence, or (`packed`) all of them in
    one tensor with the answer packed too (the fast form: the same numbers, far less per-sequence work)."""
    ids = [str(i) for i in range(len(sequences))] if ids is None else list(ids)
    if packed and sequences:  # (no sequences: the per-sequence form, which the server refuses by name)
        return encode_packed_request(model, np.concatenate(sequences), [len(s) for s in sequences], ids, outputs,
                                     version)
    request = pb.EncodeRequest(model=model, version=version, outputs=output_values(outputs), packed_results=packed)
    for seq_id, steps in zip(ids, sequences, strict=True):
        to_tensor(steps, request.sequences.add(id=seq_id).steps)
    return request


def encode_packed_request(
    model: str, steps: np.ndarray, lengths: Sequence[int] | np.ndarray, ids: Sequence[str],
    outputs: Iterable[str] | None = None, version: int = 0,
) -> pb.EncodeRequest:
    """A packed Encode request for sequences already end to end: steps (sum T_i, F), lengths (B,), ids (B,);
    the answer comes packed too."""
    request = pb.EncodeRequest(model=model, version=version, outputs=output_values(outputs), packed_results=True)
    request.packed.lengths.extend(np.asarray(lengths).tolist())
    request.packed.ids.extend(ids)
    to_tensor(steps, request.packed.steps)  # (sum T_i, F)
    return request


class SeqserveClient:
    def __init__(self, target: str, timeout: float | None = 30.0, channel: grpc.Channel | None = None,
                 security: Security | None = None) -> None:
        self.timeout = timeout
        self.channel = channel or open_channel(target, security or Security())
        self.stub = pb_grpc.SeqserveServiceStub(self.channel)

    def __enter__(self) -> SeqserveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)

    def get_model(self, model: str, version: int = 0) -> pb.ModelInfo:
        request = pb.GetModelRequest(model=model, version=version)
        return self.stub.GetModel(request, timeout=self.timeout).model

    def encode(
        self, model: str, sequences: Sequence[np.ndarray], ids: Sequence[str] | None = None,
        outputs: Iterable[str] | None = None, version: int = 0,
    ) -> list[EncodeResult]:
        """Encode sequences (each (T, F)) in one call, in the packed form; results in input order."""
        request = encode_request(model, sequences, ids, outputs, version, packed=True)
        return results_of(self.stub.Encode(request, timeout=self.timeout))

    def encode_stream(
        self, requests: Iterable[tuple[str, pb.EncodeRequest]]
    ) -> Iterator[tuple[str, list[EncodeResult] | StreamError]]:
        """Send many (request_id, request) pairs over one stream; yields (request_id, results or
        StreamError) as each completes."""
        tagged = (pb.EncodeStreamRequest(request_id=rid, request=request) for rid, request in requests)
        for answer in self.stub.EncodeStream(tagged, timeout=self.timeout):
            if answer.HasField("error"):
                yield answer.request_id, StreamError(answer.request_id, answer.error.code, answer.error.message)
            else:
                yield answer.request_id, results_of(answer.response)

    def stream_sequence(
        self, model: str, chunks: Iterable[np.ndarray], initial_state: pb.State | None = None,
        outputs: Iterable[str] | None = None, version: int = 0,
    ) -> Iterator[StreamUpdate]:
        """Send one sequence chunk by chunk (each (t, F)); the last chunk is marked as the end."""
        values = output_values(outputs)

        def requests() -> Iterator[pb.StreamSequenceRequest]:
            first = True
            previous = None
            for chunk in chunks:
                if previous is not None:
                    yield previous
                previous = pb.StreamSequenceRequest(steps=to_tensor(chunk))
                if first:
                    previous.model, previous.version = model, version
                    previous.outputs[:] = values
                    if initial_state is not None:
                        previous.initial_state.CopyFrom(initial_state)
                    first = False
            if previous is not None:
                previous.end = True
                yield previous

        for answer in self.stub.StreamSequence(requests(), timeout=self.timeout):
            yield StreamUpdate(
                result=EncodeResult.from_proto(answer.result),
                steps_seen=answer.steps_seen,
                final=answer.final,
                state=answer.state if answer.HasField("state") else None,
            )

