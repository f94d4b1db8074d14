"""Checks every request passes on arrival, whichever protocol carried it (server/v1, server/oip).

Validation happens before anything is queued: a bad sequence never reaches a batch, so it cannot fail
the requests batched with it. Each protocol layer decodes its messages into numpy and the numbers this
module checks: the count of sequences, their lengths, their finiteness, and the answer's size (estimated
from the shapes alone, so a request whose answer could not be sent is refused before anything runs).
Every error names the field (`sequences[2].steps`, `packed.lengths[1]`, `input 'x' row 3`) and the limit
or expectation it broke.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from .config import ServerConfig
from .errors import InvalidInput, LimitExceeded

# Protobuf framing, upper bounds: a field's tag and length prefix (1 + up to 5 bytes), a varint field
# (tag + up to 10 bytes), and headroom for an answer's envelope (a stream's request_id and tags).
FIELD_BYTES = 6
VARINT_FIELD_BYTES = 11
ENVELOPE_BYTES = 1024

FieldOf = Callable[[int], str]  # the field that names sequence i of a request


def check_sequence_count(count: int, field: str, config: ServerConfig, none: str) -> None:
    """A request's number of sequences: at least one (else `none`, the caller's words), at most
    max_sequences_per_request. The one count check of every request form (sequences, packed, v2 rows)."""
    if count == 0:
        raise InvalidInput(field, none)
    if count > config.max_sequences_per_request:
        raise LimitExceeded(field, count, config.max_sequences_per_request, "max_sequences_per_request")


def check_lengths(lengths: np.ndarray, field_of: FieldOf, config: ServerConfig, allow_empty: bool = False) -> None:
    """Sequence lengths (B,): at least 1 step each (unless `allow_empty`) and at most max_sequence_length."""
    if not allow_empty and (lengths < 1).any():
        row = first_row(lengths < 1)
        raise InvalidInput(field_of(row), f"empty sequence: at least 1 step is needed, got {lengths[row]}")
    if (lengths > config.max_sequence_length).any():
        row = first_row(lengths > config.max_sequence_length)
        raise LimitExceeded(f"{field_of(row)} length", int(lengths[row]), config.max_sequence_length,
                            "max_sequence_length")


def check_length(steps: int, field: str, config: ServerConfig, allow_empty: bool = False) -> None:
    """One sequence's length, as `check_lengths`."""
    check_lengths(np.array([steps]), lambda _: field, config, allow_empty)


def check_finite(values: np.ndarray, field: str) -> None:
    """A tensor (a state, say) with no NaN or Inf."""
    if not np.isfinite(values).all():
        raise InvalidInput(field, "contains NaN or Inf")


def check_finite_steps(steps: np.ndarray, field: str, lengths: np.ndarray | None = None,
                       row: str = "sequence") -> None:
    """Sequences end to end, steps (sum T_i, F) with `lengths` (B,) (None: one sequence), hold no NaN
    or Inf; the error names the first bad `row` (sequence) and step."""
    finite = np.isfinite(steps).all(axis=1)  # (sum T_i,)
    if finite.all():
        return
    step = first_row(~finite)
    if lengths is None:
        raise InvalidInput(field, f"contains NaN or Inf (first at step {step})")
    ends = np.cumsum(lengths)  # (B,)
    bad = int(np.searchsorted(ends, step, side="right"))
    first = int(ends[bad] - lengths[bad])
    raise InvalidInput(field, f"{row} {bad} contains NaN or Inf (first at step {step - first})")


def first_row(mask: np.ndarray) -> int:
    """The first True row of a (B,) mask that has one."""
    return int(np.flatnonzero(mask)[0])


def tensor_bytes(*shape: int) -> int:
    """The most bytes a protobuf tensor field of `shape` takes: its float32 data, packed shape and framing."""
    return 4 * math.prod(shape) + 10 * len(shape) + 3 * FIELD_BYTES


def label_bytes(labels: Sequence[str], classes: int) -> int:
    """The most UTF-8 bytes a label takes: the longest class label, or a class index as text (the label of
    a class the model's labels leave out)."""
    return _label_bytes(tuple(labels), classes)


@functools.lru_cache(maxsize=256)
def _label_bytes(labels: tuple[str, ...], classes: int) -> int:
    return max([len(label.encode()) for label in labels] + [len(str(classes))])


def check_answer_size(size: int, limit: int, instead: str, per_step: Sequence[str] = (), sep: str = ", ") -> None:
    """Refuse an answer of `size` bytes (estimated) over `limit`, saying what to ask for `instead` and
    which `per_step` outputs (the ones that grow with the sequence; joined by `sep`) to leave out."""
    if size <= limit:
        return
    hint = f"{instead}, or leave out {sep.join(per_step)}" if per_step else instead
    raise LimitExceeded("answer bytes (estimated)", size, limit, "max_message_bytes", hint)
