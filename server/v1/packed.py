"""The packed form of Encode: many sequences in one tensor in, one tensor per output out.

A request's `packed.steps` [sum T_i, F] + `packed.lengths` is decoded and checked once for all its
sequences (one copy, one finiteness test) and queued as it is; an answer's tensors are the batcher's
packed answer arrays, sent as they are. Same validation, limits and numbers as
the per-sequence form (`sequences`, `results`), without a message per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqserve.contract import Architecture
from seqserve.inference import Packed, PackedOutputs
from seqserve.outputs import predicted_labels
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb

from ..config import ServerConfig
from ..errors import InvalidInput, excerpt
from ..validation import check_finite_steps, check_lengths, check_sequence_count
from .codec import OUTPUT_TENSORS, decode

FIELD = "packed"


def packed_lengths(packed: pb.PackedSequences, arch: Architecture, config: ServerConfig) -> np.ndarray:
    """Each sequence's steps (B,), checked against the tensor's declared shape and the limits (no copy)."""
    count = len(packed.lengths)
    check_sequence_count(count, f"{FIELD}.lengths", config, "no sequences: give the steps of each")
    lengths = np.fromiter(packed.lengths, dtype=np.int64, count=count)  # (B,)
    check_lengths(lengths, lambda i: f"{FIELD}.lengths[{i}]", config)
    shape = list(packed.steps.shape)
    if len(shape) != 2 or shape[1] != arch.input_size:
        raise InvalidInput(f"{FIELD}.steps", f"shape must be [sum of lengths, {arch.input_size}], got {excerpt(shape)}")
    if shape[0] != int(lengths.sum()):
        raise InvalidInput(f"{FIELD}.steps", f"has {shape[0]} steps, the lengths add up to {int(lengths.sum())}")
    if packed.ids and len(packed.ids) != count:
        raise InvalidInput(f"{FIELD}.ids", f"{len(packed.ids)} ids for {count} sequences (give one each, or none)")
    return lengths


def unpack(packed: pb.PackedSequences, lengths: np.ndarray) -> Packed:
    """The sequences, decoded once (no per-sequence copies) and checked finite."""
    steps = decode(packed.steps, f"{FIELD}.steps")  # (sum T_i, F)
    check_finite_steps(steps, f"{FIELD}.steps", lengths)
    return Packed(steps, lengths)


def packed_ids(packed: pb.PackedSequences) -> list[str]:
    return list(packed.ids) or [str(i) for i in range(len(packed.lengths))]


def encode_packed(answers: PackedOutputs, outputs: frozenset[int], labels: Sequence[str], ids: Sequence[str],
                  out: pb.PackedResults) -> None:
    """Fill `out` with every sequence's prediction and the requested tensors, one tensor each."""
    arrays = answers.arrays
    indices, names = predicted_labels(arrays["logits"], labels)  # (B,)
    out.ids.extend(ids)
    out.lengths.extend(answers.lengths.tolist())
    out.labels.extend(names)
    out.label_indices.extend(indices.tolist())
    to_tensor(arrays["probabilities"], out.probabilities)  # (B, C)
    for value in outputs:
        for name in OUTPUT_TENSORS[value]:
            if name in arrays:
                to_tensor(arrays[name], getattr(out, name))
