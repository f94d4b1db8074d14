"""The packed form of Encode: many sequences in one tensor in, one tensor per output out.

A request's `packed.steps` [sum T_i, F] + `packed.lengths` is decoded and checked once for all its
sequences (one copy, one finiteness test), then cut into views; an answer's tensors are joined
from the per-sequence results with one concatenation each. Same validation, limits and numbers as
the per-sequence form (`sequences`, `results`), without a message per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqserve.contract import Architecture
from seqserve.inference import SequenceOutputs
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from server.codec import check_sequence_count, decode
from server.config import ServerConfig
from server.errors import InvalidInput, LimitExceeded, excerpt

FIELD = "packed"
# Which per-sequence results each requested output carries, and how they join: end to end along
# time (per-step tensors), or stacked along a new batch axis.
JOINED = {"outputs": np.concatenate, "attention": np.concatenate, "step_logits": np.concatenate,
          "h_n": np.stack, "c_n": np.stack, "context": np.stack, "logits": np.stack}
OUTPUT_TENSORS = {pb.OUTPUT_OUTPUTS: ("outputs",), pb.OUTPUT_HIDDEN: ("h_n", "c_n"),
                  pb.OUTPUT_ATTENTION: ("attention", "context"), pb.OUTPUT_LOGITS: ("logits",),
                  pb.OUTPUT_STEP_LOGITS: ("step_logits",)}


def packed_lengths(packed: pb.PackedSequences, arch: Architecture, config: ServerConfig) -> np.ndarray:
    """Each sequence's steps (B,), checked against the tensor's declared shape and the limits (no copy)."""
    count = len(packed.lengths)
    check_sequence_count(count, f"{FIELD}.lengths", config, "no sequences: give the steps of each")
    lengths = np.fromiter(packed.lengths, dtype=np.int64, count=count)  # (B,)
    if (lengths < 1).any():
        first = int(np.flatnonzero(lengths < 1)[0])
        raise InvalidInput(f"{FIELD}.lengths[{first}]", f"{lengths[first]}: every sequence needs at least 1 step")
    if (lengths > config.max_sequence_length).any():
        first = int(np.flatnonzero(lengths > config.max_sequence_length)[0])
        raise LimitExceeded(f"{FIELD}.lengths[{first}]", int(lengths[first]), config.max_sequence_length,
                            "max_sequence_length")
    shape = list(packed.steps.shape)
    if len(shape) != 2 or shape[1] != arch.input_size:
        raise InvalidInput(f"{FIELD}.steps", f"shape must be [sum of lengths, {arch.input_size}], got {excerpt(shape)}")
    if shape[0] != int(lengths.sum()):
        raise InvalidInput(f"{FIELD}.steps", f"has {shape[0]} steps, the lengths add up to {int(lengths.sum())}")
    if packed.ids and len(packed.ids) != count:
        raise InvalidInput(f"{FIELD}.ids", f"{len(packed.ids)} ids for {count} sequences (give one each, or none)")
    return lengths


def unpack(packed: pb.PackedSequences, lengths: np.ndarray) -> list[np.ndarray]:
    """The sequences (T_i, F) as views into one decoded copy of the steps, all finite."""
    steps = decode(packed.steps, f"{FIELD}.steps")  # (sum T_i, F)
    finite = np.isfinite(steps).all(axis=1)  # (sum T_i,)
    if not finite.all():
        step = int(np.flatnonzero(~finite)[0])
        sequence = int(np.searchsorted(np.cumsum(lengths), step, side="right"))
        raise InvalidInput(f"{FIELD}.steps", f"sequence {sequence} contains NaN or Inf "
                                             f"(first at step {step - int(lengths[:sequence].sum())})")
    return np.split(steps, np.cumsum(lengths)[:-1])


def packed_ids(packed: pb.PackedSequences) -> list[str]:
    return list(packed.ids) or [str(i) for i in range(len(packed.lengths))]


def encode_packed(results: Sequence[SequenceOutputs], outputs: frozenset[int], labels: Sequence[str],
                  ids: Sequence[str], out: pb.PackedResults) -> None:
    """Fill `out` with every sequence's prediction and the requested tensors, one tensor each."""
    logits = np.stack([r["logits"] for r in results])  # (B, C)
    indices = logits.argmax(axis=1)  # (B,)
    out.ids.extend(ids)
    out.lengths.extend(len(r["outputs"]) for r in results)  # every run returns per-step outputs
    out.labels.extend(labels[i] if i < len(labels) else str(i) for i in indices.tolist())
    out.label_indices.extend(indices.tolist())
    to_tensor(np.stack([r["probabilities"] for r in results]), out.probabilities)  # (B, C)
    for value in outputs:
        for name in OUTPUT_TENSORS[value]:
            if name in results[0]:
                to_tensor(JOINED[name]([r[name] for r in results]), getattr(out, name))
