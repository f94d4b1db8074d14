"""Fuzzing every RPC: malformed messages and bytes that do not decode get a client error, never
UNKNOWN or INTERNAL, the log holds no traceback and at most a few decode-failure lines, and good
clients running alongside get their answers (checked against onnxruntime run in this process).

The inputs, each driving every RPC it applies to (hypothesis profile "seqserve-fuzz": derandomized,
150 examples a test, so CI sees the same inputs every run):
- valid messages with up to three fields replaced by hostile values (odd shapes and bytes, huge or
  negative numbers, long or unprintable strings, unknown enum values);
- streaming states whose every field may hold anything (the path to int64 arithmetic);
- bytes that are not a valid message (truncated messages, bad varints, invalid UTF-8 in a string
  field, noise), sent with an identity serializer, alone or after good messages of a stream.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference
from rpc import raises_status
from servers import REPOSITORY, threaded_server

from seqserve.client import SeqserveClient
from seqserve.server.errors import MAX_STATUS_CHARS
from seqserve.server.wire import DECODE_LOG_BURST, DECODE_LOG_PERIOD_S, RateLimitedLog
from seqserve.v1 import seqserve_pb2 as pb

settings.register_profile(
    "seqserve-fuzz", derandomize=True, database=None, max_examples=150, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FUZZ = settings.get_profile("seqserve-fuzz")

SERVICE = "/seqserve.v1.SeqserveService/"
MODELS = ["jv_bilstm_attn", "jv_bigru_attn", "jv_lstm_stream"]
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.FAILED_PRECONDITION}
ALLOWED = CLIENT_ERRORS | {grpc.StatusCode.OK}
INT64 = (-(2**63), 2**63 - 1)
F = 12  # features per step, every committed model


# --- the server, its log, and good clients beside the fuzzing ---------------------------------------


@pytest.fixture(scope="module")
def server():
    with threaded_server(REPOSITORY, max_sequence_length=200, max_sequences_per_request=8,
                         max_message_bytes=1024 * 1024, max_stream_buffer_steps=400, max_stream_chunks=16) as s:
        yield s


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ch


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def server_log() -> Iterator[Records]:
    """Every log record of this process while the block runs (the server runs in a thread of it)."""
    handler, root = Records(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def assert_quiet(records: list[logging.LogRecord], seconds: float) -> int:
    """No traceback and no error in the log; decode failures rate-limited. Returns their line count."""
    for record in records:
        text = record.getMessage()
        assert record.exc_info is None and "Traceback" not in text, text
        assert record.levelno < logging.ERROR, (record.name, text)
    decode_lines = [r for r in records if r.getMessage() == "undecodable request"]
    windows = math.ceil(seconds / DECODE_LOG_PERIOD_S) + 1  # the first window may have begun in an earlier test
    assert len(decode_lines) <= DECODE_LOG_BURST * windows, len(decode_lines)
    return len(decode_lines)


@pytest.fixture(scope="module")
def expected() -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Per model: a few sequences and their logits (B, C) from the onnxruntime reference."""
    rng = np.random.default_rng(7)
    answers = {}
    for model in MODELS:
        sequences = [rng.standard_normal((n, F), dtype=np.float32) for n in (5, 23, 61)]
        answers[model] = (sequences, reference(model, sequences)["logits"])
    return answers


@dataclass
class GoodClients:
    """Threads encoding and streaming known sequences until stopped; every answer is checked."""

    target: str
    expected: dict[str, tuple[list[np.ndarray], np.ndarray]]
    answers: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self, got: np.ndarray, want: np.ndarray, what: str) -> None:
        # Batched with fuzzed requests of other lengths, a GEMM may take another kernel: last bits only.
        if got.argmax() != want.argmax() or not np.allclose(got, want, atol=1e-5, rtol=0):
            self.failures.append(f"{what}: {got} != {want}")
        self.answers += 1

    def encode(self, model: str) -> None:
        sequences, logits = self.expected[model]
        with SeqserveClient(self.target, timeout=30) as client:
            while not self.stop.is_set():
                for i, result in enumerate(client.encode(model, sequences, outputs=["logits"])):
                    self.check(result.logits, logits[i], f"{model} encode [{i}]")

    def stream(self, model: str) -> None:
        sequences, logits = self.expected[model]
        with SeqserveClient(self.target, timeout=30) as client:
            while not self.stop.is_set():
                chunks = np.array_split(sequences[2], 4)
                *_, last = client.stream_sequence(model, chunks, outputs=["logits"])
                self.check(last.result.logits, logits[2], f"{model} stream")


@contextmanager
def good_clients(server, expected) -> Iterator[GoodClients]:
    clients = GoodClients(server.target, expected)
    threads = [threading.Thread(target=clients.encode, args=("jv_bilstm_attn",)),
               threading.Thread(target=clients.stream, args=("jv_lstm_stream",))]
    for thread in threads:
        thread.start()
    try:
        yield clients
    finally:
        clients.stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(t.is_alive() for t in threads), "a good client hung"
    assert clients.answers > 0 and not clients.failures, clients.failures[:3]


# --- strategies: valid messages with a few fields set to anything ------------------------------------
#
# Each message starts valid and has up to three fields replaced by hostile values (odd shapes and
# bytes, huge or negative numbers, long or unprintable strings, unknown enum values), so the checks
# behind the first one are reached too.

EDGES = [0, 1, -1, 2**31, 2**62, 2**62 + 1, 2**63 - 2, *INT64]  # where int64 arithmetic goes wrong
int64s = st.one_of(st.sampled_from(EDGES), st.integers(*INT64))
long_strings = st.builds(lambda piece, n: piece * n, st.text(min_size=1, max_size=3), st.integers(60, 7000))
names = st.one_of(st.sampled_from(MODELS), st.text(max_size=20), long_strings)
output_values = st.lists(st.one_of(st.integers(0, 6), st.integers(-(2**31), 2**31 - 1)), max_size=5)
dims = st.one_of(st.integers(0, 40), st.sampled_from([F, *EDGES]), st.integers(*INT64))
# Shapes numpy cannot hold even empty, products past int64, more dimensions than any tensor here.
HOSTILE_SHAPES = [[0, 2**63 - 1], [2**63 - 1, 0, 2**63 - 1], [2**62, 2**62], [2**32, 2**32, 0], [-1, 64], [1] * 9]


@st.composite
def good_tensors(draw, width: int = F, min_steps: int = 0) -> pb.Tensor:
    """[time, width] finite float32 steps: a valid sequence or chunk."""
    shape = [draw(st.integers(min_steps, 30)), width]
    seed = draw(st.integers(0, 2**32 - 1))
    return pb.Tensor(shape=shape, data=np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).tobytes())


@st.composite
def bad_tensors(draw, width: int = F) -> pb.Tensor:
    """Any shape (negative, huge, many dimensions) with any bytes, or a good shape with NaN, Inf or bytes short."""
    shape = draw(st.one_of(st.tuples(st.integers(0, 30), st.just(width)).map(list), st.lists(dims, max_size=4),
                           st.sampled_from(HOSTILE_SHAPES)))
    elements = math.prod(shape) if all(d >= 0 for d in shape) else -1
    if not 0 < elements <= 4096 or draw(st.booleans()):
        return pb.Tensor(shape=shape, data=draw(st.binary(max_size=64)))
    values = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(elements, dtype=np.float32)
    values[draw(st.integers(0, elements - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    data = values.tobytes()
    return pb.Tensor(shape=shape, data=data[: len(data) - draw(st.sampled_from([0, 1, 4]))])


def set_field(message: Message, path: str, value: object) -> None:
    """Set a field by its dotted path: a message is copied in, a list replaces a repeated field."""
    *parents, name = path.split(".")
    for parent in parents:
        message = getattr(message, parent)
    if isinstance(value, Message):
        getattr(message, name).CopyFrom(value)
    elif isinstance(value, list):
        del getattr(message, name)[:]
        getattr(message, name).extend(value)
    else:
        setattr(message, name, value)


@st.composite
def mutated(draw, base: st.SearchStrategy[Message], mutations: dict[str, st.SearchStrategy]) -> Message:
    message = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(sorted(mutations)))
        set_field(message, path, draw(mutations[path]))
    return message


ZERO_STATE = pb.Tensor(shape=[2, 64], data=bytes(2 * 64 * 4))  # jv_lstm_stream: 2 layers of 64
sequences = st.builds(pb.Sequence, id=st.text(max_size=8), steps=good_tensors(min_steps=1))
odd_sequences = st.builds(pb.Sequence, id=st.one_of(st.text(max_size=8), long_strings),
                          steps=st.one_of(good_tensors(), bad_tensors()))

get_model_requests = mutated(
    st.builds(pb.GetModelRequest, model=st.sampled_from(MODELS), version=st.sampled_from([0, 1])),
    {"model": names, "version": int64s},
)
encode_requests = mutated(
    st.builds(pb.EncodeRequest, model=st.sampled_from(MODELS), sequences=st.lists(sequences, min_size=1, max_size=4),
              outputs=st.lists(st.sampled_from([1, 2, 3, 4]), max_size=3)),
    {"model": names, "version": int64s, "outputs": output_values,
     "sequences": st.lists(st.one_of(sequences, odd_sequences), max_size=12)},
)
encode_stream_requests = st.builds(pb.EncodeStreamRequest, request_id=st.text(max_size=30), request=encode_requests)

STATE_MUTATIONS = {"initial_state.model": names, "initial_state.version": int64s, "initial_state.steps_seen": int64s,
                   "initial_state.h": bad_tensors(64), "initial_state.c": bad_tensors(64)}


@st.composite
def first_chunks(draw) -> pb.StreamSequenceRequest:
    """A valid first message (the streaming model mostly, often with a state), then mutated."""
    model = draw(st.sampled_from(["jv_lstm_stream", "jv_lstm_stream", "jv_bilstm_attn"]))
    first = pb.StreamSequenceRequest(model=model, steps=draw(good_tensors()), end=draw(st.booleans()))
    if model == "jv_lstm_stream" and draw(st.integers(0, 2)):
        first.initial_state.CopyFrom(pb.State(model=model, version=draw(st.sampled_from([0, 1])), h=ZERO_STATE,
                                              c=ZERO_STATE, steps_seen=draw(st.integers(0, 1000))))
    return draw(mutated(st.just(first), {"model": names, "version": int64s, "steps": bad_tensors(),
                                         "outputs": output_values, **STATE_MUTATIONS}))


# A state whose every field may hold anything, its tensors mostly the right shape so the rest is looked at.
state_tensors = st.just(ZERO_STATE) | st.just(ZERO_STATE) | bad_tensors(64)
states = st.builds(
    pb.State, model=st.sampled_from(["jv_lstm_stream", "", "jv_bilstm_attn"]) | names,
    version=st.sampled_from([0, 1]) | int64s, steps_seen=st.integers(0, 10**6) | int64s, h=state_tensors,
    c=state_tensors,
)
later_chunks = mutated(
    st.builds(pb.StreamSequenceRequest, steps=good_tensors(), end=st.booleans()),
    {"model": names, "version": int64s, "steps": bad_tensors(), "initial_state.h": st.just(ZERO_STATE)},
)
stream_requests = st.builds(lambda first, later: [first, *later], first_chunks(), st.lists(later_chunks, max_size=4))


# --- strategies: bytes that are not a valid message ---------------------------------------------------

BAD_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"ok\x80", b"\xf8\x88\x80\x80\x80"]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@st.composite
def undecodable(draw, messages: st.SearchStrategy) -> bytes:
    """Bytes derived from a valid message of the right type, broken in one of four ways."""
    valid = draw(messages).SerializeToString()
    kind = draw(st.sampled_from(["truncated", "bad varint", "bad utf-8", "noise"]))
    if kind == "truncated" and len(valid) > 1:
        return valid[: draw(st.integers(1, len(valid) - 1))]
    if kind == "bad varint":  # field 2 (a varint in every request that has one) with 11 continuation bytes
        return valid + b"\x10" + b"\xff" * draw(st.integers(10, 12)) + draw(st.binary(max_size=4))
    if kind == "bad utf-8":  # field 1: a string in every request that has one (a string inside one otherwise)
        bad = draw(st.sampled_from(BAD_UTF8))
        return b"\x0a" + varint(len(bad)) + bad + valid
    return draw(st.binary(min_size=1, max_size=200))


# --- calling the server with bytes --------------------------------------------------------------------


@dataclass
class Outcomes:
    """Status codes seen, by (kind, method, code name); EncodeStream's in-band errors counted too."""

    seen: Counter = field(default_factory=Counter)

    def add(self, kind: str, method: str, code: grpc.StatusCode, details: str = "") -> None:
        self.seen[(kind, method, code.name)] += 1
        assert code in ALLOWED, (kind, method, code, details)
        assert len(details) <= MAX_STATUS_CHARS, (method, len(details))

    def unary(self, channel: grpc.Channel, kind: str, method: str, data: bytes) -> None:
        call = channel.unary_unary(SERVICE + method, request_serializer=bytes, response_deserializer=bytes)
        try:
            call(data, timeout=30)
            self.add(kind, method, grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            self.add(kind, method, exc.code(), exc.details())

    def stream(self, channel: grpc.Channel, kind: str, method: str, messages: list[bytes]) -> None:
        call = channel.stream_stream(SERVICE + method, request_serializer=bytes,
                                     response_deserializer=pb.EncodeStreamResponse.FromString
                                     if method == "EncodeStream" else pb.StreamSequenceResponse.FromString)
        try:
            for answer in call(iter(messages), timeout=30):
                if method == "EncodeStream" and answer.HasField("error"):
                    self.add(kind, "EncodeStream in-band", grpc.StatusCode[answer.error.code], answer.error.message)
            self.add(kind, method, grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            self.add(kind, method, exc.code(), exc.details())


@pytest.fixture(scope="module")
def outcomes() -> Iterator[Outcomes]:
    seen = Outcomes()
    yield seen
    print("\nstatus codes seen (kind, method, code): count")
    for key, count in sorted(seen.seen.items()):
        print(f"  {key}: {count}")


def fuzz(server, channel, expected, run) -> None:
    """Run a hypothesis test `run` with good clients alongside; then check the log and the server."""
    started = time.monotonic()
    with server_log() as log, good_clients(server, expected):
        run()
    lines = assert_quiet(log.records, time.monotonic() - started)
    models = channel.unary_unary(SERVICE + "ListModels", request_serializer=pb.ListModelsRequest.SerializeToString,
                                 response_deserializer=pb.ListModelsResponse.FromString)
    assert [m.name for m in models(pb.ListModelsRequest(), timeout=10).models] == sorted(MODELS)
    print(f"\n{run.__name__}: {time.monotonic() - started:.1f} s, {lines} decode-failure log lines")


# --- the fuzz tests -------------------------------------------------------------------------------------


def test_unary_rpcs_with_malformed_messages(server, channel, expected, outcomes):
    @FUZZ
    @given(get_model_requests, encode_requests)
    def unary_messages(get_model: pb.GetModelRequest, encode: pb.EncodeRequest) -> None:
        outcomes.unary(channel, "message", "GetModel", get_model.SerializeToString())
        outcomes.unary(channel, "message", "Encode", encode.SerializeToString())

    fuzz(server, channel, expected, unary_messages)


def test_streaming_rpcs_with_malformed_messages(server, channel, expected, outcomes):
    @FUZZ
    @given(st.lists(encode_stream_requests, min_size=1, max_size=3), stream_requests)
    def stream_messages(tagged: list[pb.EncodeStreamRequest], chunks: list[pb.StreamSequenceRequest]) -> None:
        outcomes.stream(channel, "message", "EncodeStream", [m.SerializeToString() for m in tagged])
        outcomes.stream(channel, "message", "StreamSequence", [m.SerializeToString() for m in chunks])

    fuzz(server, channel, expected, stream_messages)


def test_stream_states_with_fields_that_hold_anything(server, channel, expected, outcomes):
    @FUZZ
    @given(states, good_tensors(), output_values | st.just([]))
    def stream_states(state: pb.State, steps: pb.Tensor, outputs: list[int]) -> None:
        first = pb.StreamSequenceRequest(model="jv_lstm_stream", steps=steps, initial_state=state, outputs=outputs)
        outcomes.stream(channel, "state", "StreamSequence", [first.SerializeToString()])

    fuzz(server, channel, expected, stream_states)


GOOD_CHUNK = pb.StreamSequenceRequest(model="jv_lstm_stream", steps=pb.Tensor(shape=[3, F], data=bytes(3 * F * 4)))
GOOD_TAGGED = pb.EncodeStreamRequest(request_id="good", request=pb.EncodeRequest(
    model="jv_bigru_attn", sequences=[pb.Sequence(steps=GOOD_CHUNK.steps)]))


@pytest.mark.slow  # 4-9 s on two busy cores; the two tests below check the same in well under a second
def test_every_rpc_with_bytes_that_do_not_decode(server, channel, expected, outcomes):
    @FUZZ
    @given(undecodable(st.just(pb.ListModelsRequest())), undecodable(get_model_requests),
           undecodable(encode_requests), undecodable(encode_stream_requests), undecodable(first_chunks()),
           st.integers(0, 2))
    def raw_bytes(list_models: bytes, get_model: bytes, encode: bytes, tagged: bytes, chunk: bytes,
                  good_before: int) -> None:
        outcomes.unary(channel, "bytes", "ListModels", list_models)
        outcomes.unary(channel, "bytes", "GetModel", get_model)
        outcomes.unary(channel, "bytes", "Encode", encode)
        # a bad message after `good_before` good ones: the good ones are answered, then the stream ends
        outcomes.stream(channel, "bytes", "EncodeStream", [GOOD_TAGGED.SerializeToString()] * good_before + [tagged])
        outcomes.stream(channel, "bytes", "StreamSequence",
                        [GOOD_CHUNK.SerializeToString()] * good_before + [chunk])

    fuzz(server, channel, expected, raw_bytes)
    invalid = sum(n for (kind, _, code), n in outcomes.seen.items() if kind == "bytes" and code == "INVALID_ARGUMENT")
    assert invalid > DECODE_LOG_BURST * 3  # enough decode failures that the log limit was put to work


@pytest.mark.parametrize("method", ["ListModels", "GetModel", "Encode"])
def test_unary_calls_with_bytes_that_do_not_decode(channel, method):
    call = channel.unary_unary(SERVICE + method, request_serializer=bytes, response_deserializer=bytes)
    for data, reason in ((b"\x10" + b"\xff" * 11, "Wire format was corrupt"), (b"\xff", "Wire format was corrupt"),
                         (b"\x0a\x02\xc3\x28", "UTF-8")):
        if method == "ListModels" and reason == "UTF-8":
            continue  # field 1 is not a string there: an unknown field, kept and ignored
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, reason,
                           f"{len(data)} bytes are not a valid seqserve.v1.{method}Request message"):
            call(data, timeout=10)


def test_a_bad_message_mid_stream_ends_the_stream_after_the_answers_before_it(channel):
    tagged = channel.stream_stream(SERVICE + "EncodeStream", request_serializer=bytes,
                                   response_deserializer=pb.EncodeStreamResponse.FromString)
    answers = []
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not a valid seqserve.v1.EncodeStreamRequest"):
        for answer in tagged(iter([GOOD_TAGGED.SerializeToString(), b"\x0a\x02\xff\xfe"]), timeout=10):
            answers.append(answer)
    assert [a.request_id for a in answers] == ["good"] and answers[0].HasField("response")
    chunks = channel.stream_stream(SERVICE + "StreamSequence", request_serializer=bytes,
                                   response_deserializer=pb.StreamSequenceResponse.FromString)
    answers = []
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not a valid seqserve.v1.StreamSequenceRequest"):
        for answer in chunks(iter([GOOD_CHUNK.SerializeToString(), b"\x10" + b"\xff" * 11]), timeout=10):
            answers.append(answer)
    assert [a.steps_seen for a in answers] == [3]


def test_decode_failure_lines_are_rate_limited():
    now = [0.0]
    logger = logging.getLogger("test_fuzz.rate_limit")
    with server_log() as log:
        limited = RateLimitedLog(logger, burst=3, period=10.0, clock=lambda: now[0])
        for step in range(100):  # 100 failures over 20 s: 3 lines in each of the 2 windows
            now[0] = step * 0.2
            limited.warning("undecodable request", method="Encode")
    lines = [r for r in log.records if r.name == logger.name]
    assert len(lines) == 6
    assert [r.suppressed for r in lines] == [0, 0, 0, 47, 0, 0]  # the first line of a window counts the rest
