"""Stateful sequences, Triton-style: the server keeps h/c between the requests of one sequence.

A request names its sequence with the `sequence_id` parameter (an integer or a string) and marks the
first and last request with `sequence_start` and `sequence_end`. Between requests the sequence's
state (h, c: (L, H) each) lives here, for unidirectional (streaming) models only. A sequence ends
with the request marked `sequence_end`, or when no request has come for `sequence_idle_timeout_s`;
at most `max_live_sequences` live at once (RESOURCE_EXHAUSTED past that).

Requests of one sequence run one after another, in the order they entered (`SequenceStore.enter`,
called synchronously as each request is read), whichever calls or streams carry them: each waits
for the one before it to finish, so it starts from that one's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from seqserve.inference import SequenceOutputs
from seqserve.oip import grpc_service_pb2 as pb

from ..errors import FailedPrecondition, InvalidInput, LimitExceeded, excerpt

SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END = "sequence_id", "sequence_start", "sequence_end"
MAX_ID_CHARS = 128  # longest string sequence_id
SequenceId = int | str


@dataclass(frozen=True)
class SequenceControl:
    """A request's place in a sequence, from its parameters."""

    id: SequenceId
    start: bool
    end: bool


def _field(name: str) -> str:
    return f"parameters[{name!r}]"


def _flag(parameters: Mapping[str, pb.InferParameter], name: str) -> bool:
    if name not in parameters:
        return False
    parameter = parameters[name]
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidInput(_field(name), f"must be a bool_param, got {parameter.WhichOneof('parameter_choice')}")
    return parameter.bool_param


def _sequence_id(parameter: pb.InferParameter) -> SequenceId:
    """An integer id (int64 or uint64; read as uint64, like Triton) or a non-empty string; never 0."""
    kind = parameter.WhichOneof("parameter_choice")
    if kind in ("int64_param", "uint64_param"):
        value = getattr(parameter, kind) % 2**64
        if value == 0:
            raise InvalidInput(_field(SEQUENCE_ID), "0 names no sequence; leave sequence_id out instead")
        return value
    if kind == "string_param":
        value = parameter.string_param
        if not value or len(value) > MAX_ID_CHARS:
            raise InvalidInput(_field(SEQUENCE_ID), f"a string id must have 1 to {MAX_ID_CHARS} characters, "
                                                    f"got {len(value)}")
        return value
    raise InvalidInput(_field(SEQUENCE_ID), f"must be an int64_param, uint64_param or string_param, got {kind}")


def sequence_control(parameters: Mapping[str, pb.InferParameter]) -> SequenceControl | None:
    """The request's sequence, or None for a request outside any sequence. Other parameters are
    left alone (Triton passes them on to the model; these models take none)."""
    start, end = _flag(parameters, SEQUENCE_START), _flag(parameters, SEQUENCE_END)
    if SEQUENCE_ID not in parameters:
        if start or end:
            raise InvalidInput(_field(SEQUENCE_START if start else SEQUENCE_END), "needs a sequence_id")
        return None
    return SequenceControl(_sequence_id(parameters[SEQUENCE_ID]), start, end)


SequenceKey = tuple[str, int, SequenceId]  # (model, version, sequence id): ids are per model version


@dataclass(eq=False)
class LiveSequence:
    key: SequenceKey
    h: np.ndarray | None = None  # (L, H); None: zeros (the start)
    c: np.ndarray | None = None  # (L, H), LSTM
    last: asyncio.Future | None = None  # done when the latest request that entered has finished
    timer: asyncio.TimerHandle | None = None  # ends the sequence when it has been idle too long

    def advance(self, result: SequenceOutputs) -> None:
        """Keep the state a request ended in (copies: the batch's outputs need not stay alive)."""
        self.h = result["h_n"].copy()  # (L, H)
        self.c = result["c_n"].copy() if "c_n" in result else None  # (L, H)


@dataclass(eq=False)
class Turn:
    """One request's turn in its sequence: it starts when the request before it has finished."""

    sequence: LiveSequence
    previous: asyncio.Future | None
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    async def wait(self) -> None:
        if self.previous is not None and not self.previous.done():
            await asyncio.wait([self.previous])  # never cancels `previous`, whatever happens to this request

    def finish(self) -> None:
        """Hand the sequence on; a request that left before its turn (cancelled) hands it on only
        once the one before it has finished."""
        if self.previous is None or self.previous.done():
            self._release()
        else:
            self.previous.add_done_callback(lambda _: self._release())

    def _release(self, *_: object) -> None:
        if not self.done.done():
            self.done.set_result(None)


class SequenceStore:
    def __init__(self, max_live: int, idle_timeout_s: float) -> None:
        self.max_live = max_live
        self.idle_timeout_s = idle_timeout_s
        self._live: dict[SequenceKey, LiveSequence] = {}

    def __len__(self) -> int:
        return len(self._live)

    def enter(self, key: SequenceKey, control: SequenceControl) -> Turn:
        """Take the next turn in a sequence (call as the request is read, before any await). A start
        begins the sequence afresh (zeros); an end frees it for good once this request has run."""
        sequence = self._begin(key, control) if control.start else self._continue(key)
        if sequence.timer is not None:
            sequence.timer.cancel()
            sequence.timer = None
        if control.end:
            self._live.pop(key, None)
        turn = Turn(sequence, sequence.last)
        sequence.last = turn.done
        turn.done.add_done_callback(lambda _: self._idle(sequence, turn.done))
        return turn

    def _begin(self, key: SequenceKey, control: SequenceControl) -> LiveSequence:
        old = self._live.pop(key, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        if len(self._live) >= self.max_live and not control.end:
            raise LimitExceeded("live sequences", len(self._live) + 1, self.max_live, "max_live_sequences",
                                "end sequences with sequence_end, or wait for idle ones to end "
                                f"(sequence_idle_timeout_s, {self.idle_timeout_s:g} s)")
        sequence = LiveSequence(key)
        self._live[key] = sequence
        return sequence

    def _continue(self, key: SequenceKey) -> LiveSequence:
        sequence = self._live.get(key)
        if sequence is None:
            model, version, sequence_id = key
            shown = excerpt(sequence_id) if isinstance(sequence_id, str) else str(sequence_id)
            raise FailedPrecondition(
                f"{_field(SEQUENCE_ID)}: no live sequence {shown} for model {model!r} version {version}: start it "
                f"with sequence_start (it may have ended, or been idle for over {self.idle_timeout_s:g} s, "
                "sequence_idle_timeout_s)")
        return sequence

    def _idle(self, sequence: LiveSequence, done: asyncio.Future) -> None:
        """After a request: if it was the sequence's latest and the sequence lives on, start its idle clock."""
        if sequence.last is done and self._live.get(sequence.key) is sequence:
            sequence.timer = asyncio.get_running_loop().call_later(self.idle_timeout_s, self._expire, sequence)

    def _expire(self, sequence: LiveSequence) -> None:
        if self._live.get(sequence.key) is sequence:
            del self._live[sequence.key]
