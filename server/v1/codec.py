"""seqserve.v1 requests in, results out: decode protobuf messages into numpy, and encode results.

Decoding checks what only this protocol has (its shapes, its output enum, its states' origin); the
checks every protocol shares (counts, lengths, finiteness, the answer's size) are server/validation.py's.
Errors name the field (`sequences[2].steps`) and show a client's values only as `excerpt`s. `AnswerSize`
estimates a v1 answer's bytes, so a request whose answer could not be sent is refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from seqserve.contract import Architecture
from seqserve.inference import SequenceOutputs
from seqserve.outputs import label_of
from seqserve.tensors import TensorDecodeError, from_tensor, to_tensor
from seqserve.v1 import seqserve_pb2 as pb

from ..config import ServerConfig
from ..errors import InvalidInput, excerpt
from ..validation import (
    ENVELOPE_BYTES,
    FIELD_BYTES,
    VARINT_FIELD_BYTES,
    check_answer_size,
    check_finite,
    check_finite_steps,
    check_length,
    label_bytes,
    tensor_bytes,
)

DEFAULT_OUTPUTS = frozenset({pb.OUTPUT_HIDDEN, pb.OUTPUT_ATTENTION, pb.OUTPUT_LOGITS})
STREAM_DEFAULT_OUTPUTS = frozenset({pb.OUTPUT_HIDDEN, pb.OUTPUT_LOGITS})  # see stream_default_outputs
PER_STEP_OUTPUTS = {pb.OUTPUT_OUTPUTS: "OUTPUT_OUTPUTS", pb.OUTPUT_STEP_LOGITS: "OUTPUT_STEP_LOGITS"}
# The most steps a stream may count (steps_seen): far beyond any real stream, and with room to add
# chunks without passing int64 (2**63 - 1), the type of every steps_seen field on the wire.
MAX_STEPS_SEEN = 2**62


def decode(tensor: pb.Tensor, field: str) -> np.ndarray:
    try:
        return from_tensor(tensor, field)
    except TensorDecodeError as exc:
        raise InvalidInput(exc.field, exc.detail) from None


def decode_steps(
    tensor: pb.Tensor, field: str, arch: Architecture, config: ServerConfig, allow_empty: bool = False
) -> np.ndarray:
    """A sequence or chunk: float32 (T, F) with F the model's features, finite, within limits."""
    check_steps_shape(tensor, field, arch, config, allow_empty)
    steps = decode(tensor, field)  # (T, F)
    check_finite_steps(steps, field)
    return steps


def check_steps_shape(
    tensor: pb.Tensor, field: str, arch: Architecture, config: ServerConfig, allow_empty: bool = False
) -> int:
    """The steps a sequence's declared shape holds, checked against the model and the limits (nothing
    is copied: sizes can be judged before any bytes are decoded)."""
    if len(tensor.shape) != 2:
        raise InvalidInput(field, f"shape must be [time, {arch.input_size}], got {excerpt(tensor.shape)}")
    time_steps, features = tensor.shape
    if features != arch.input_size:
        raise InvalidInput(field, f"has {features} features per step, the model expects {arch.input_size}")
    check_length(time_steps, field, config, allow_empty)
    return time_steps


# The model's output tensors each requested output carries (a model may lack some: c_n, step_logits).
OUTPUT_TENSORS = {pb.OUTPUT_OUTPUTS: ("outputs",), pb.OUTPUT_HIDDEN: ("h_n", "c_n"),
                  pb.OUTPUT_ATTENTION: ("attention", "context"), pb.OUTPUT_LOGITS: ("logits",),
                  pb.OUTPUT_STEP_LOGITS: ("step_logits",)}


def tensors_of(outputs: frozenset[int]) -> frozenset[str]:
    """The model outputs a set of requested outputs needs fetched (logits always: the prediction)."""
    return frozenset({"logits"}.union(*(OUTPUT_TENSORS[value] for value in outputs)))


def stream_default_outputs(arch: Architecture) -> frozenset[int]:
    """What a StreamSequence answers when it asks for nothing: the state and the logits, and for a
    bidirectional model (answered once, at the end) the attention too."""
    return STREAM_DEFAULT_OUTPUTS if arch.streaming else STREAM_DEFAULT_OUTPUTS | {pb.OUTPUT_ATTENTION}


def decode_outputs(requested: Iterable[int], arch: Architecture, field: str = "outputs") -> frozenset[int]:
    wanted = frozenset(requested) or DEFAULT_OUTPUTS
    valid = set(pb.Output.values()) - {pb.OUTPUT_UNSPECIFIED}
    unknown = sorted(wanted - valid)
    if unknown:
        raise InvalidInput(field, f"unknown output value(s) {excerpt(unknown)}")
    if pb.OUTPUT_STEP_LOGITS in wanted and not arch.step_logits:
        raise InvalidInput(field, "OUTPUT_STEP_LOGITS: this model has no per-step logits")
    return wanted


def check_version(version: int, field: str = "version") -> None:
    """A requested version: 0 (the latest) or a version number, never negative."""
    if version < 0:
        raise InvalidInput(field, f"must be 0 (the latest) or a version number, got {version}")


def check_state_origin(state: pb.State, name: str, version: int, field: str) -> None:
    """A state may only continue on the model version that produced it.

    `state.model` and `state.version` name that version; left empty (or 0), they mean "unknown":
    the client vouches that the state fits, and only its tensors' shapes are checked. A state from
    another model or another version is refused (its h and c mean nothing to other weights).
    """
    check_version(state.version, f"{field}.version")
    if state.model and state.model != name:
        raise InvalidInput(f"{field}.model", f"the state belongs to model {excerpt(state.model)}, not {name!r}")
    if state.version and state.version != version:
        raise InvalidInput(f"{field}.version", f"the state comes from version {state.version} of {name!r}, this "
                                               f"stream runs version {version}: open the stream with version "
                                               f"{state.version}, or start again without initial_state")


def check_steps_seen(steps_seen: int, field: str) -> int:
    if not 0 <= steps_seen <= MAX_STEPS_SEEN:
        raise InvalidInput(field, f"must be between 0 and 2**62 ({MAX_STEPS_SEEN}), got {steps_seen}")
    return steps_seen


def decode_state(state: pb.State, arch: Architecture, field: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An initial state handed back by a client: h (L, H) and, for LSTM, c (L, H)."""
    if not arch.streaming:
        raise InvalidInput(field, "bidirectional models take no initial state")
    shape = [arch.num_layers, arch.hidden_size]
    h = decode(state.h, f"{field}.h")
    if list(h.shape) != shape:
        raise InvalidInput(f"{field}.h", f"shape must be {shape}, got {list(h.shape)}")
    c = None
    if arch.has_cell_state:
        c = decode(state.c, f"{field}.c")
        if list(c.shape) != shape:
            raise InvalidInput(f"{field}.c", f"shape must be {shape}, got {list(c.shape)}")
    check_finite(h, f"{field}.h")
    if c is not None:
        check_finite(c, f"{field}.c")
    return h, c


def encode_result(
    result: SequenceOutputs, outputs: frozenset[int], labels: list[str], seq_id: str = "",
    out: pb.SequenceResult | None = None,
) -> pb.SequenceResult:
    """Fill a SequenceResult with the prediction and the requested tensors."""
    msg = out if out is not None else pb.SequenceResult()
    msg.id = seq_id
    logits = result["logits"]  # (C,)
    index = int(logits.argmax())
    msg.label_index = index
    msg.label = label_of(index, labels)
    to_tensor(result["probabilities"], msg.probabilities)
    if pb.OUTPUT_LOGITS in outputs:
        to_tensor(logits, msg.logits)
    if pb.OUTPUT_OUTPUTS in outputs:
        to_tensor(result["outputs"], msg.outputs)
    if pb.OUTPUT_HIDDEN in outputs:
        to_tensor(result["h_n"], msg.h_n)
        if "c_n" in result:
            to_tensor(result["c_n"], msg.c_n)
    if pb.OUTPUT_ATTENTION in outputs and "attention" in result:
        to_tensor(result["attention"], msg.attention)
        to_tensor(result["context"], msg.context)
    if pb.OUTPUT_STEP_LOGITS in outputs and "step_logits" in result:
        to_tensor(result["step_logits"], msg.step_logits)
    return msg


@dataclass(frozen=True)
class AnswerSize:
    """Upper bounds of an answer's bytes, known before anything is computed: from the outputs asked
    for, the model's shapes and the sequences' lengths (outputs [T, D*H], step_logits [T, C],
    h_n and c_n [L*D, H], attention [T], context [D*H], logits and probabilities [C]) plus framing.
    """

    arch: Architecture
    outputs: frozenset[int]
    label_bytes: int  # the longest class label, UTF-8
    name_bytes: int  # the model's name, UTF-8

    @classmethod
    def of(cls, arch: Architecture, outputs: frozenset[int], labels: list[str], name: str) -> AnswerSize:
        return cls(arch, outputs, label_bytes(labels, arch.num_classes), len(name.encode()))

    def result(self, steps: int, id_bytes: int = 0) -> int:
        """One SequenceResult of a `steps`-long sequence whose id takes `id_bytes`."""
        a, wanted = self.arch, self.outputs
        width, states, classes = a.directions * a.hidden_size, a.num_layers * a.directions, a.num_classes
        size = 3 * FIELD_BYTES + id_bytes + self.label_bytes + VARINT_FIELD_BYTES + tensor_bytes(classes)
        if pb.OUTPUT_LOGITS in wanted:
            size += tensor_bytes(classes)
        if pb.OUTPUT_OUTPUTS in wanted:
            size += tensor_bytes(steps, width)
        if pb.OUTPUT_HIDDEN in wanted:
            size += tensor_bytes(states, a.hidden_size) * (2 if a.has_cell_state else 1)
        if pb.OUTPUT_ATTENTION in wanted and a.has_attention:
            size += tensor_bytes(steps) + tensor_bytes(width)
        if pb.OUTPUT_STEP_LOGITS in wanted and a.step_logits:
            size += tensor_bytes(steps, classes)
        return size

    def encode_response(self, lengths: Iterable[int], id_bytes: Iterable[int]) -> int:
        """An EncodeResponse (or EncodeStreamResponse) for sequences of these lengths and ids."""
        results = sum(self.result(steps, ids) for steps, ids in zip(lengths, id_bytes, strict=True))
        return ENVELOPE_BYTES + self.name_bytes + VARINT_FIELD_BYTES + results

    def stream_response(self, steps: int) -> int:
        """A StreamSequenceResponse answering `steps` steps, with the state a unidirectional model adds."""
        state = 0
        if self.arch.streaming:
            tensors = 2 if self.arch.has_cell_state else 1
            state = self.name_bytes + 3 * VARINT_FIELD_BYTES + tensors * tensor_bytes(
                self.arch.num_layers, self.arch.hidden_size)
        return ENVELOPE_BYTES + self.result(steps) + state + 2 * VARINT_FIELD_BYTES

    def check(self, size: int, limit: int, instead: str) -> None:
        """Refuse an answer of `size` bytes over `limit`, saying what to ask for `instead`."""
        per_step = [name for value, name in PER_STEP_OUTPUTS.items() if value in self.outputs]
        check_answer_size(size, limit, instead, per_step, sep=" and ")
