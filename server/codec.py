"""Requests in, results out: decode and validate protobuf messages into numpy, and encode results.

Validation happens here, on arrival, before anything is queued: a bad sequence never reaches a
batch, so it cannot fail the requests batched with it. Every message names the field
(`sequences[2].steps`) and the limit or expectation it broke.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from seqserve.contract import Architecture
from seqserve.tensors import TensorDecodeError, from_tensor, to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from server.batching import SequenceOutputs
from server.config import ServerConfig
from server.errors import InvalidInput, LimitExceeded

DEFAULT_OUTPUTS = frozenset({pb.OUTPUT_HIDDEN, pb.OUTPUT_ATTENTION, pb.OUTPUT_LOGITS})


def decode(tensor: pb.Tensor, field: str) -> np.ndarray:
    try:
        return from_tensor(tensor, field)
    except TensorDecodeError as exc:
        raise InvalidInput(exc.field, exc.detail) from None


def decode_steps(
    tensor: pb.Tensor, field: str, arch: Architecture, config: ServerConfig, allow_empty: bool = False
) -> np.ndarray:
    """A sequence or chunk: float32 (T, F) with F the model's features, finite, within limits."""
    if len(tensor.shape) != 2:
        raise InvalidInput(field, f"shape must be [time, {arch.input_size}], got {list(tensor.shape)}")
    time_steps, features = tensor.shape
    if features != arch.input_size:
        raise InvalidInput(field, f"has {features} features per step, the model expects {arch.input_size}")
    if time_steps == 0 and not allow_empty:
        raise InvalidInput(field, "empty sequence: at least 1 step is needed")
    if time_steps > config.max_sequence_length:
        raise LimitExceeded(field + " length", time_steps, config.max_sequence_length, "max_sequence_length")
    steps = decode(tensor, field)
    if not np.isfinite(steps).all():
        bad_step = int(np.argwhere(~np.isfinite(steps))[0][0])
        raise InvalidInput(field, f"contains NaN or Inf (first at step {bad_step})")
    return steps


def decode_outputs(requested: Iterable[int], arch: Architecture, field: str = "outputs") -> frozenset[int]:
    wanted = frozenset(requested) or DEFAULT_OUTPUTS
    valid = set(pb.Output.values()) - {pb.OUTPUT_UNSPECIFIED}
    unknown = sorted(wanted - valid)
    if unknown:
        raise InvalidInput(field, f"unknown output value(s) {unknown}")
    if pb.OUTPUT_STEP_LOGITS in wanted and not arch.step_logits:
        raise InvalidInput(field, "OUTPUT_STEP_LOGITS: this model has no per-step logits")
    return wanted


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
    for name, value in (("h", h), ("c", c)):
        if value is not None and not np.isfinite(value).all():
            raise InvalidInput(f"{field}.{name}", "contains NaN or Inf")
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
    msg.label = labels[index] if index < len(labels) else str(index)
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
