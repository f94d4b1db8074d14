"""Every limit on what a client may send: the status code, and the limit or field named in the message.

One server with small limits (sequences of 600 steps, 8 per request, 128 KiB messages) serves the
module; the state-version test starts its own, with two versions of the streaming model.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import numpy as np
import pytest
from rpc import raises_status
from servers import REPOSITORY, threaded_server, versioned_repository

from seqserve.client import encode_request
from seqserve.server.errors import EXCERPT_CHARS, MAX_STATUS_CHARS
from seqserve.server.v1.codec import ENVELOPE_BYTES, MAX_STEPS_SEEN, AnswerSize
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

BI_MODEL = "jv_bilstm_attn"
STREAM_MODEL = "jv_lstm_stream"
MAX_STEPS, MAX_SEQUENCES, MAX_BYTES = 600, 8, 128 * 1024
F = 12  # features per step of every committed model


@pytest.fixture(scope="module")
def server():
    with threaded_server(REPOSITORY, max_sequence_length=MAX_STEPS, max_sequences_per_request=MAX_SEQUENCES,
                         max_message_bytes=MAX_BYTES) as s:
        yield s


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SeqserveServiceStub(channel)


def steps(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, F), dtype=np.float32)


def stream(stub, *messages: pb.StreamSequenceRequest) -> list[pb.StreamSequenceResponse]:
    return list(stub.StreamSequence(iter(messages), timeout=10))


def in_band_error(stub, request: pb.EncodeRequest) -> pb.Error:
    [answer] = list(stub.EncodeStream(iter([pb.EncodeStreamRequest(request_id="r", request=request)]), timeout=10))
    assert answer.request_id == "r" and answer.HasField("error"), answer
    return answer.error


def batches_run(server, model: str) -> float:
    return server.server.metrics.registry.get_sample_value("seqserve_batch_size_count", {"model": model}) or 0.0


def state_after(stub, chunk: np.ndarray, version: int = 0) -> pb.State:
    """The state a stream of STREAM_MODEL hands out after `chunk`."""
    [answer] = stream(stub, pb.StreamSequenceRequest(model=STREAM_MODEL, version=version, steps=to_tensor(chunk),
                                                     end=True))
    return answer.state


def continuing(state: pb.State, chunk: np.ndarray, version: int = 0) -> pb.StreamSequenceRequest:
    return pb.StreamSequenceRequest(model=STREAM_MODEL, version=version, steps=to_tensor(chunk),
                                    initial_state=state, end=True)


# --- sequence length and sequences per request --------------------------------------------------


def test_sequence_length_limit(stub):
    request = encode_request(BI_MODEL, [steps(5), steps(MAX_STEPS + 1)])
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "sequences[1].steps length", str(MAX_STEPS + 1), str(MAX_STEPS), "max_sequence_length"):
        stub.Encode(request, timeout=10)
    chunk = pb.StreamSequenceRequest(model=STREAM_MODEL, steps=to_tensor(steps(MAX_STEPS + 1)))
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "chunk[0].steps length", "max_sequence_length"):
        stream(stub, chunk)
    assert len(stub.Encode(encode_request(BI_MODEL, [steps(MAX_STEPS)]), timeout=10).results) == 1


def test_sequences_per_request_limit(stub):
    request = encode_request(BI_MODEL, [steps(3)] * (MAX_SEQUENCES + 1), outputs=["logits"])
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "sequences", str(MAX_SEQUENCES + 1), "max_sequences_per_request"):
        stub.Encode(request, timeout=10)
    error = in_band_error(stub, request)
    assert error.code == "RESOURCE_EXHAUSTED" and "max_sequences_per_request" in error.message
    ok = encode_request(BI_MODEL, [steps(3)] * MAX_SEQUENCES, outputs=["logits"])
    assert len(stub.Encode(ok, timeout=10).results) == MAX_SEQUENCES


# --- the answer's size, estimated before anything runs -----------------------------------------


def test_an_answer_over_max_message_bytes_is_refused_before_any_compute(server, stub):
    """Two 600-step sequences are 58 kB in, but their per-step outputs (2 x 600 x 128 floats) 614 kB out."""
    request = encode_request(BI_MODEL, [steps(MAX_STEPS, 1), steps(MAX_STEPS, 2)], outputs=["outputs", "logits"])
    before = batches_run(server, BI_MODEL)
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "max_message_bytes", str(MAX_BYTES), "fewer sequences per call", "OUTPUT_OUTPUTS") as failure:
        stub.Encode(request, timeout=10)
    message = failure.details
    assert "OUTPUT_STEP_LOGITS" not in message  # only what was asked for is named
    error = in_band_error(stub, request)
    assert error.code == "RESOURCE_EXHAUSTED" and "max_message_bytes" in error.message
    assert batches_run(server, BI_MODEL) == before  # nothing ran
    del request.outputs[:]  # the same sequences without per-step tensors are answered
    assert len(stub.Encode(request, timeout=10).results) == 2
    assert batches_run(server, BI_MODEL) > before


def test_stream_answers_over_max_message_bytes_are_refused(server, stub):
    chunk = to_tensor(steps(MAX_STEPS))
    before = batches_run(server, STREAM_MODEL)
    per_step = [pb.OUTPUT_OUTPUTS, pb.OUTPUT_STEP_LOGITS]
    # unidirectional: the chunk's answer (600 x (64 + 9) floats)
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       "max_message_bytes", "shorter chunks", "OUTPUT_OUTPUTS and OUTPUT_STEP_LOGITS"):
        stream(stub, pb.StreamSequenceRequest(model=STREAM_MODEL, steps=chunk, outputs=per_step))
    assert batches_run(server, STREAM_MODEL) == before
    first = pb.StreamSequenceRequest(model=BI_MODEL, steps=chunk, outputs=[pb.OUTPUT_OUTPUTS])
    # bidirectional: the whole sequence's answer, while buffering
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_message_bytes", "shorter sequence", "OUTPUT_OUTPUTS"):
        stream(stub, first, pb.StreamSequenceRequest(steps=chunk, end=True))


@pytest.mark.parametrize("model", [BI_MODEL, "jv_bigru_attn", STREAM_MODEL])
def test_the_size_estimate_bounds_the_real_answer_closely(server, stub, model):
    wanted = [pb.OUTPUT_OUTPUTS, pb.OUTPUT_HIDDEN, pb.OUTPUT_ATTENTION, pb.OUTPUT_LOGITS]
    if model == STREAM_MODEL:
        wanted.append(pb.OUTPUT_STEP_LOGITS)
    sequences = [steps(n, n) for n in (1, 17, 90)]
    request = encode_request(model, sequences, ids=["a", "bb" * 20, ""])
    request.outputs[:] = wanted
    response = stub.Encode(request, timeout=10)
    served = server.sync(lambda: server.server.registry.get(model))
    estimate = AnswerSize.of(served.runtime.arch, frozenset(wanted), served.runtime.version.class_labels, model)
    predicted = estimate.encode_response([len(s) for s in sequences], [len(s.id) for s in request.sequences])
    framing = 300  # per sequence: the estimate counts every length prefix and shape varint at its widest
    assert response.ByteSize() <= predicted <= response.ByteSize() + ENVELOPE_BYTES + framing * len(sequences)
    if model == STREAM_MODEL:
        [answer] = stream(stub, pb.StreamSequenceRequest(model=model, steps=to_tensor(sequences[2]), outputs=wanted))
        assert answer.ByteSize() <= estimate.stream_response(90) <= answer.ByteSize() + ENVELOPE_BYTES + framing


# --- streaming state: steps_seen range, bound to its model version ----------------------------


def test_steps_seen_must_be_in_range(stub):
    state = state_after(stub, steps(4))
    assert state.steps_seen == 4
    for bad in (-1, -(2**63), MAX_STEPS_SEEN + 1, 2**63 - 1):
        state.steps_seen = bad
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "initial_state.steps_seen", "2**62", str(bad)):
            stream(stub, continuing(state, steps(3)))
    state.steps_seen = MAX_STEPS_SEEN - 3  # the cap itself may be reached...
    [answer] = stream(stub, continuing(state, steps(3)))
    assert answer.steps_seen == answer.state.steps_seen == MAX_STEPS_SEEN
    state.steps_seen = MAX_STEPS_SEEN  # ...not passed
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "initial_state.steps_seen", "2**62"):
        stream(stub, continuing(state, steps(1)))


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """A server with versions 1 and 2 of the streaming model (the same files: only the number differs)."""
    repo = versioned_repository(tmp_path_factory.mktemp("repo"), STREAM_MODEL, (1, 2))
    with threaded_server(repo) as s, grpc.insecure_channel(s.target) as channel:
        yield pb_grpc.SeqserveServiceStub(channel)


def test_a_state_continues_only_on_the_version_that_made_it(two_versions):
    stub = two_versions
    state = state_after(stub, steps(4), version=1)
    assert (state.model, state.version) == (STREAM_MODEL, 1)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "initial_state.version", "version 1", "runs version 2"):
        stream(stub, continuing(state, steps(3)))  # the latest: version 2
    [answer] = stream(stub, continuing(state, steps(3), version=1))
    assert answer.steps_seen == 7 and answer.state.version == 1
    state.version = 0  # unknown: the client vouches for it, as for a state with no model named
    assert stream(stub, continuing(state, steps(3)))[0].state.version == 2
    state.version = -1
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "initial_state.version", "-1"):
        stream(stub, continuing(state, steps(3)))


def test_later_chunks_may_not_change_the_model_or_version(stub):
    first = pb.StreamSequenceRequest(model=STREAM_MODEL, steps=to_tensor(steps(2)))
    for later, field in ((pb.StreamSequenceRequest(version=3), "version"),
                         (pb.StreamSequenceRequest(version=-5), "version"),
                         (pb.StreamSequenceRequest(model="other"), "model")):
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, f"{field}:"):
            stream(stub, first, later)


# --- versions, shapes and enums: client numbers never reach arithmetic unchecked --------------------


def test_a_negative_version_is_invalid_everywhere(stub):
    calls = {
        "GetModel": lambda: stub.GetModel(pb.GetModelRequest(model=BI_MODEL, version=-1), timeout=10),
        "Encode": lambda: stub.Encode(encode_request(BI_MODEL, [steps(3)], version=-1), timeout=10),
        "StreamSequence": lambda: stream(stub, pb.StreamSequenceRequest(model=BI_MODEL, version=-(2**63))),
    }
    for call in calls.values():
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "version:", "must be 0 (the latest)"):
            call()
    error = in_band_error(stub, encode_request(BI_MODEL, [steps(3)], version=-1))
    assert error.code == "INVALID_ARGUMENT" and error.message.startswith("version:")
    with raises_status(grpc.StatusCode.NOT_FOUND, "version", str(2**63 - 1)):
        stub.GetModel(pb.GetModelRequest(model=BI_MODEL, version=2**63 - 1))


BAD_SHAPES = {  # shape, what the message says when it is a state's h
    "negative": ([-1, F], "negative dimension"),
    "overflowing product": ([2**62, 2**62], "too large"),
    "huge beside zero": ([0, 2**63 - 1], "too large"),
    "too many dimensions": ([1] * 9, "9 dimensions"),
    "ten thousand dimensions": ([1] * 10_000, "10000 dimensions"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHAPES))
def test_bad_shapes_are_invalid_arguments(stub, case):
    shape, fragment = BAD_SHAPES[case]
    tensor = pb.Tensor(shape=shape)
    request = pb.EncodeRequest(model=BI_MODEL, sequences=[pb.Sequence(steps=tensor)])
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "sequences[0].steps") as failure:
        stub.Encode(request, timeout=10)
    message = failure.details
    assert len(message) <= 200
    state = pb.State(model=STREAM_MODEL, h=tensor)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "initial_state.h", fragment) as failure:
        stream(stub, continuing(state, steps(1)))
    message = failure.details
    assert len(message) <= 200


def test_unknown_output_values_are_invalid_and_shown_in_short(stub):
    request = encode_request(BI_MODEL, [steps(3)])
    request.outputs.extend(range(6, 10_006))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT,
                       "outputs", "unknown output value(s) [6, 7,", "(10000 values)") as failure:
        stub.Encode(request, timeout=10)
    message = failure.details
    assert len(message) < 200


# --- error texts: a client's string is shown as a short excerpt ------------------------------------


def long_names() -> Iterable[str]:
    yield "x" * 20_000
    yield "\u00e9\n\x00\U0001F600" * 5_000  # not ASCII, not printable


@pytest.mark.parametrize("name", list(long_names()), ids=["ascii", "unprintable"])
def test_a_20_kb_model_name_is_not_found_with_a_short_excerpt(stub, name):
    calls = {
        "GetModel": lambda: stub.GetModel(pb.GetModelRequest(model=name), timeout=10),
        "GetModel version": lambda: stub.GetModel(pb.GetModelRequest(model=name, version=3), timeout=10),
        "Encode": lambda: stub.Encode(encode_request(name, [steps(3)]), timeout=10),
        "StreamSequence": lambda: stream(stub, pb.StreamSequenceRequest(model=name, steps=to_tensor(steps(3)))),
    }
    for label, call in calls.items():
        with raises_status(grpc.StatusCode.NOT_FOUND, "model", f"...' ({len(name)} characters)") as failure:
            call()
        message = failure.details
        assert len(message) <= MAX_STATUS_CHARS and message.isascii() and message.isprintable(), label
        quoted = message.split("'")[1]
        assert len(quoted) <= EXCERPT_CHARS + 3, (label, quoted)
    error = in_band_error(stub, encode_request(name, [steps(3)]))
    assert error.code == "NOT_FOUND" and len(error.message) <= MAX_STATUS_CHARS
    later = pb.StreamSequenceRequest(model=name)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "model:") as failure:
        stream(stub, pb.StreamSequenceRequest(model=STREAM_MODEL, steps=to_tensor(steps(2))), later)
    message = failure.details
    assert len(message) <= MAX_STATUS_CHARS
