"""The Open Inference Protocol (KServe v2 gRPC) end to end: a real server on a free port, real channels,
the committed models, and tritonclient unchanged as the client (sync, aio and streaming), plus raw
stubs generated from protos/inference/ so the proto itself is exercised."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reference import padded, reference_batch
from rpc import raises_status
from servers import REPOSITORY, ROOT, assert_reading_held, threaded_server, versioned_repository, wait_until

from seqserve.client import SeqserveClient
from seqserve.inference import length_groups
from seqserve.oip import grpc_service_pb2 as pb
from seqserve.oip import grpc_service_pb2_grpc as pb_grpc

MODELS = ["jv_bilstm_attn", "jv_bigru_attn", "jv_lstm_stream"]
STREAM_MODEL = "jv_lstm_stream"
SERVICE = "inference.GRPCInferenceService"
V1_OUTPUTS = ["outputs", "hidden", "attention", "logits"]
ATOL = 1e-6


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    lines = (ROOT / "samples" / "japanese_vowels_sample.jsonl").read_text().splitlines()
    return [np.array(json.loads(line)["steps"], dtype=np.float32) for line in lines]  # (T_i, 12) each


@pytest.fixture(scope="module")
def server():
    with threaded_server(REPOSITORY, max_message_bytes=8 * 1024 * 1024) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(server.target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def inputs_of(**arrays: np.ndarray) -> list[tc.InferInput]:
    """tritonclient inputs, datatype from the array (float32 -> FP32, int64 -> INT64, ...)."""
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64",
                 np.dtype(np.int32): "INT32"}
    result = []
    for name, array in arrays.items():
        tensor = tc.InferInput(name, list(array.shape), datatypes[array.dtype])
        tensor.set_data_from_numpy(array)
        result.append(tensor)
    return result


# --- health and metadata ---------------------------------------------------------------------------


def test_liveness_readiness_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    for model in MODELS:
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready(STREAM_MODEL, "7")
    metadata = client.get_server_metadata()
    assert metadata.name == "seqserve" and metadata.version
    assert {"sequence", "statistics"} <= set(metadata.extensions)


EXPECTED_METADATA = {  # name: (inputs, outputs), each [(name, datatype, shape)]
    "jv_bilstm_attn": (
        [("x", "FP32", [-1, -1, 12]), ("lengths", "INT64", [-1])],
        [("outputs", "FP32", [-1, -1, 128]), ("h_n", "FP32", [4, -1, 64]), ("c_n", "FP32", [4, -1, 64]),
         ("context", "FP32", [-1, 128]), ("attention", "FP32", [-1, -1]), ("logits", "FP32", [-1, 9]),
         ("probabilities", "FP32", [-1, 9]), ("label", "BYTES", [-1])]),
    "jv_bigru_attn": (
        [("x", "FP32", [-1, -1, 12]), ("lengths", "INT64", [-1])],
        [("outputs", "FP32", [-1, -1, 128]), ("h_n", "FP32", [4, -1, 64]), ("context", "FP32", [-1, 128]),
         ("attention", "FP32", [-1, -1]), ("logits", "FP32", [-1, 9]), ("probabilities", "FP32", [-1, 9]),
         ("label", "BYTES", [-1])]),
    "jv_lstm_stream": (
        [("x", "FP32", [-1, -1, 12]), ("lengths", "INT64", [-1]), ("h0", "FP32", [2, -1, 64]),
         ("c0", "FP32", [2, -1, 64])],
        [("outputs", "FP32", [-1, -1, 64]), ("h_n", "FP32", [2, -1, 64]), ("c_n", "FP32", [2, -1, 64]),
         ("logits", "FP32", [-1, 9]), ("step_logits", "FP32", [-1, -1, 9]), ("probabilities", "FP32", [-1, 9]),
         ("label", "BYTES", [-1])]),
}


@pytest.mark.parametrize("model", MODELS)
def test_metadata_of_every_default_model(client, model):
    metadata = client.get_model_metadata(model)
    assert (metadata.name, list(metadata.versions), metadata.platform) == (model, ["1"], "onnxruntime_onnx")
    inputs, outputs = EXPECTED_METADATA[model]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == outputs
    with raises_status(grpc.StatusCode.NOT_FOUND, "nope"):
        client.get_model_metadata("nope")


# --- ModelInfer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_infer_every_output_equals_encode_and_onnxruntime(client, server, sequences, model):
    """A mixed-length padded batch: every output (the default) matches onnxruntime on the same batch,
    and each row matches seqserve.v1's Encode of that sequence."""
    chosen = [sequences[i] for i in (3, 0, 17, 9, 30)]  # unsorted lengths
    x, lengths = padded(chosen)
    result = client.infer(model, inputs_of(x=x, lengths=lengths), request_id="batch-1")
    answer = result.get_response()
    assert (answer.model_name, answer.model_version, answer.id) == (model, "1", "batch-1")
    names = [name for name, _, _ in EXPECTED_METADATA[model][1]]
    assert [o.name for o in answer.outputs] == names
    reference = reference_batch(model, x, lengths)
    for name in names[:-2]:  # the model's own outputs
        np.testing.assert_allclose(result.as_numpy(name), reference[name], atol=ATOL, rtol=0, err_msg=name)
    with SeqserveClient(server.target) as v1:
        encoded = v1.encode(model, chosen, outputs=V1_OUTPUTS + (["step_logits"] if model == STREAM_MODEL else []))
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    for i, (r, T) in enumerate(zip(encoded, lengths, strict=True)):
        assert labels[i].decode() == r.label
        np.testing.assert_allclose(probabilities[i], r.probabilities, atol=ATOL, rtol=0)
        np.testing.assert_allclose(result.as_numpy("outputs")[i, :T], r.outputs, atol=ATOL, rtol=0)
        assert not result.as_numpy("outputs")[i, T:].any()  # zeros on padding, like the model's own
        np.testing.assert_allclose(result.as_numpy("h_n")[:, i], r.h_n, atol=ATOL, rtol=0)
        np.testing.assert_allclose(result.as_numpy("logits")[i], r.logits, atol=ATOL, rtol=0)
        if r.attention is not None:
            np.testing.assert_allclose(result.as_numpy("attention")[i, :T], r.attention, atol=ATOL, rtol=0)
            np.testing.assert_allclose(result.as_numpy("context")[i], r.context, atol=ATOL, rtol=0)


def test_outputs_asked_for_come_back_in_that_order(client, sequences):
    x, lengths = padded(sequences[:2])
    wanted = [tc.InferRequestedOutput("label"), tc.InferRequestedOutput("logits")]
    answer = client.infer("jv_bigru_attn", inputs_of(x=x, lengths=lengths), outputs=wanted).get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("label", "BYTES", [2]),
                                                                            ("logits", "FP32", [2, 9])]
    assert len(answer.raw_output_contents) == 2


def test_lengths_left_out_means_every_row_is_full_length(client, sequences):
    x = np.stack([s[:7] for s in sequences[:4]])  # (4, 7, 12)
    full = client.infer("jv_bilstm_attn", inputs_of(x=x)).as_numpy("logits")
    given = client.infer("jv_bilstm_attn", inputs_of(x=x, lengths=np.full(4, 7, np.int64))).as_numpy("logits")
    np.testing.assert_array_equal(full, given)


def test_aio_client_concurrent_calls(server, sequences):
    async def run() -> list[np.ndarray]:
        client = tca.InferenceServerClient(server.target)
        try:
            assert await client.is_server_ready()
            calls = [client.infer("jv_bigru_attn", inputs_of(x=s[None]), outputs=[tc.InferRequestedOutput("logits")])
                     for s in sequences[:12]]
            return [r.as_numpy("logits")[0] for r in await asyncio.gather(*calls)]
        finally:
            await client.close()

    logits = asyncio.run(run())
    x, lengths = padded(sequences[:12])
    np.testing.assert_allclose(np.stack(logits), reference_batch("jv_bigru_attn", x, lengths)["logits"],
                               atol=ATOL, rtol=0)


def test_a_large_request_within_the_servers_limit(client, sequences):
    """Over gRPC's 4 MiB default, within max_message_bytes (8 MiB here): tritonclient's INT32_MAX is met."""
    x = np.zeros((100, 1000, 12), np.float32)  # (100, 1000, 12): 4.8 MB, mostly padding
    x[:, :5] = sequences[0][:5]
    lengths = np.full(100, 5, np.int64)
    result = client.infer("jv_bigru_attn", inputs_of(x=x, lengths=lengths), outputs=[tc.InferRequestedOutput("logits")])
    reference = reference_batch("jv_bigru_attn", x[:, :5], lengths)
    np.testing.assert_allclose(result.as_numpy("logits"), reference["logits"], atol=ATOL, rtol=0)


def test_message_size_limits_are_resource_exhausted(client, sequences):
    too_big = np.zeros((64, 4000, 12), np.float32)  # 12.3 MB, over the server's 8 MiB
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED):
        client.infer("jv_bigru_attn", inputs_of(x=too_big))
    long_rows = np.tile(sequences[0][None, :1], (64, 2000, 1))  # (64, 2000, 12): 6.1 MB in, 65 MB out
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_message_bytes", "leave out outputs, attention"):
        client.infer("jv_bigru_attn", inputs_of(x=long_rows))


BAD_REQUESTS = {  # case: (model, inputs, outputs, code, fragments)
    "wrong datatype": ("jv_bigru_attn", {"x": np.zeros((1, 3, 12), np.float64)}, None,
                       grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "FP64", "FP32"]),
    "lengths datatype": ("jv_bigru_attn", {"x": np.zeros((1, 3, 12), np.float32), "lengths": np.array([3], np.int32)},
                         None, grpc.StatusCode.INVALID_ARGUMENT, ["input 'lengths'", "INT32", "INT64"]),
    "wrong features": ("jv_bigru_attn", {"x": np.zeros((1, 3, 11), np.float32)}, None,
                       grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "[1, 3, 11]", "[-1, -1, 12]"]),
    "wrong rank": ("jv_bigru_attn", {"x": np.zeros((3, 12), np.float32)}, None,
                   grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "[3, 12]"]),
    "lengths past x": ("jv_bigru_attn", {"x": np.zeros((2, 3, 12), np.float32), "lengths": np.array([3, 4])}, None,
                       grpc.StatusCode.INVALID_ARGUMENT, ["input 'lengths'", "row 1", "0..3"]),
    "lengths count": ("jv_bigru_attn", {"x": np.zeros((2, 3, 12), np.float32), "lengths": np.array([3])}, None,
                      grpc.StatusCode.INVALID_ARGUMENT, ["input 'lengths'", "1 lengths for 2 rows"]),
    "empty row": ("jv_bigru_attn", {"x": np.zeros((2, 3, 12), np.float32), "lengths": np.array([3, 0])}, None,
                  grpc.StatusCode.INVALID_ARGUMENT, ["input 'lengths'", "row 1", "empty"]),
    "nan": ("jv_bigru_attn", {"x": np.full((1, 3, 12), np.nan, np.float32)}, None,
            grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "NaN"]),
    "unknown input": ("jv_bigru_attn", {"x": np.zeros((1, 3, 12), np.float32), "y": np.zeros(1, np.float32)}, None,
                      grpc.StatusCode.INVALID_ARGUMENT, ["inputs[1]", "'y'"]),
    "state on a bidirectional model": ("jv_bigru_attn", {"x": np.zeros((1, 3, 12), np.float32),
                                                         "h0": np.zeros((4, 1, 64), np.float32)}, None,
                                       grpc.StatusCode.INVALID_ARGUMENT, ["'h0'"]),
    "state of the wrong batch": (STREAM_MODEL, {"x": np.zeros((1, 3, 12), np.float32),
                                                "h0": np.zeros((2, 2, 64), np.float32)}, None,
                                 grpc.StatusCode.INVALID_ARGUMENT, ["input 'h0'", "batch"]),
    "no x": ("jv_bigru_attn", {"lengths": np.array([3])}, None, grpc.StatusCode.INVALID_ARGUMENT, ["'x'"]),
    "unknown output": ("jv_bigru_attn", {"x": np.zeros((1, 3, 12), np.float32)}, ["c_n"],
                       grpc.StatusCode.INVALID_ARGUMENT, ["outputs[0]", "'c_n'"]),
    "output twice": ("jv_bigru_attn", {"x": np.zeros((1, 3, 12), np.float32)}, ["logits", "logits"],
                     grpc.StatusCode.INVALID_ARGUMENT, ["outputs[1]", "twice"]),
    "unknown model": ("nope", {"x": np.zeros((1, 3, 12), np.float32)}, None, grpc.StatusCode.NOT_FOUND, ["'nope'"]),
    "too many rows": ("jv_bigru_attn", {"x": np.zeros((300, 1, 12), np.float32)}, None,
                      grpc.StatusCode.RESOURCE_EXHAUSTED, ["max_sequences_per_request"]),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_their_code_and_name_the_input(client, case):
    model, arrays, outputs, code, fragments = BAD_REQUESTS[case]
    wanted = [tc.InferRequestedOutput(name) for name in outputs] if outputs else None
    with raises_status(code, *fragments):
        client.infer(model, inputs_of(**arrays), outputs=wanted)


def test_bad_versions(client):
    x = inputs_of(x=np.zeros((1, 3, 12), np.float32))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "model_version", "'abc'"):
        client.infer("jv_bigru_attn", x, model_version="abc")
    with raises_status(grpc.StatusCode.NOT_FOUND, "version", "7"):
        client.infer("jv_bigru_attn", x, model_version="7")
    assert client.infer("jv_bigru_attn", x, model_version="1").as_numpy("logits").shape == (1, 9)


def test_v1_and_v2_requests_share_batches(server, sequences):
    """Encode calls and ModelInfer calls queued while the batcher is held run as one batch."""
    same_length = [s[:7] for s in sequences[:8]]
    batcher = server.sync(lambda: server.server.registry.get("jv_bilstm_attn").batcher)
    labels = {"model": "jv_bilstm_attn"}
    registry = server.server.metrics.registry
    runs_before = registry.get_sample_value("seqserve_batch_size_count", labels) or 0
    v2 = tc.InferenceServerClient(server.target)
    with SeqserveClient(server.target) as v1, ThreadPoolExecutor(len(same_length)) as pool:
        server.sync(batcher.hold)
        try:
            v1_calls = [pool.submit(v1.encode, "jv_bilstm_attn", [s], outputs=["logits"]) for s in same_length[:4]]
            v2_calls = [pool.submit(v2.infer, "jv_bilstm_attn", inputs_of(x=s[None])) for s in same_length[4:]]
            wait_until(lambda: server.sync(lambda: batcher.open_requests) == len(same_length))
        finally:
            server.sync(batcher.release)
        v1_logits = [f.result(30)[0].logits for f in v1_calls]
        v2_logits = [f.result(30).as_numpy("logits")[0] for f in v2_calls]
    v2.close()
    assert registry.get_sample_value("seqserve_batch_size_count", labels) - runs_before == 1  # one run for all 8
    assert len(length_groups(np.array([len(s) for s in same_length]), max_waste=server.config.padding_waste,
                                       min_split=server.config.padding_min_split)) == 1
    x, lengths = padded(same_length)
    reference = reference_batch("jv_bilstm_attn", x, lengths)["logits"]
    np.testing.assert_allclose(np.stack(v1_logits + v2_logits), reference, atol=ATOL, rtol=0)


# --- stateful sequences ----------------------------------------------------------------------------


def chunks_of(sequence: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(sequence, np.cumsum(sizes)[:-1])


class StreamAnswers:
    """A tritonclient stream's callback: answers by request id, errors by message."""

    def __init__(self) -> None:
        self.answers: queue.Queue = queue.Queue()

    def __call__(self, result, error) -> None:
        self.answers.put((result, error))

    def take(self, count: int) -> list:
        return [self.answers.get(timeout=30) for _ in range(count)]


def full_run(model: str, sequence: np.ndarray) -> dict[str, np.ndarray]:
    return reference_batch(model, sequence[None], np.array([len(sequence)]))


def assert_chunks_equal_full_run(results: list, full: dict[str, np.ndarray]) -> None:
    """Chunk answers, in order, against one run over the whole sequence."""
    np.testing.assert_allclose(np.concatenate([r.as_numpy("outputs")[0] for r in results]), full["outputs"][0],
                               atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.concatenate([r.as_numpy("step_logits")[0] for r in results]),
                               full["step_logits"][0], atol=ATOL, rtol=0)
    for name in ("h_n", "c_n", "logits"):
        np.testing.assert_allclose(results[-1].as_numpy(name), full[name], atol=ATOL, rtol=0, err_msg=name)


def test_chunked_sequences_on_streams_equal_full_runs(server, sequences):
    """Two sequences interleaved on one stream (an integer and a string id) and a third on another stream,
    in chunks (one of them empty), each equal to one run over the whole sequence."""
    whole = {1: np.concatenate(sequences[:3]), "utt-2": np.concatenate(sequences[3:5]), 3: sequences[6]}
    sizes = {1: [7, 1, 0, 13], "utt-2": [5, 20], 3: [4, 4]}
    plans = {sid: chunks_of(seq, sizes[sid] + [len(seq) - sum(sizes[sid])]) for sid, seq in whole.items()}
    first, second = tc.InferenceServerClient(server.target), tc.InferenceServerClient(server.target)
    streams = {1: first, "utt-2": first, 3: second}
    callbacks = {first: StreamAnswers(), second: StreamAnswers()}
    for c, callback in callbacks.items():
        c.start_stream(callback=callback)
    longest = max(len(p) for p in plans.values())
    for k in range(longest):  # interleaved: chunk k of each sequence, then chunk k + 1, ...
        for sid, plan in plans.items():
            if k < len(plan):
                streams[sid].async_stream_infer(
                    STREAM_MODEL, inputs_of(x=plan[k][None]), request_id=f"{sid}/{k}", sequence_id=sid,
                    sequence_start=k == 0, sequence_end=k == len(plan) - 1)
    answered = {first: callbacks[first].take(len(plans[1]) + len(plans["utt-2"])),
                second: callbacks[second].take(len(plans[3]))}
    for c in callbacks:
        c.stop_stream()
        c.close()
    results: dict = {sid: {} for sid in plans}
    for result, error in answered[first] + answered[second]:
        assert error is None, error
        response = result.get_response()
        assert response.parameters["triton_final_response"].bool_param
        sid, k = response.id.split("/")
        results[int(sid) if sid.isdigit() else sid][int(k)] = result
    for sid, plan in plans.items():
        assert sorted(results[sid]) == list(range(len(plan)))
        assert_chunks_equal_full_run([results[sid][k] for k in range(len(plan))], full_run(STREAM_MODEL, whole[sid]))


def test_unary_sequence_and_client_held_state_both_equal_the_full_run(client, sequences):
    """The same chunks twice: server-kept state (sequence_id on ModelInfer), and stateless, the client
    sending h0/c0 itself and keeping the h_n/c_n it gets back."""
    sequence = np.concatenate(sequences[7:9])
    chunks = chunks_of(sequence, [6, 9, len(sequence) - 15])
    kept = [client.infer(STREAM_MODEL, inputs_of(x=chunk[None]), sequence_id=77, sequence_start=i == 0,
                         sequence_end=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    h = c = np.zeros((2, 1, 64), np.float32)  # (L, B, H)
    held = []
    for chunk in chunks:
        result = client.infer(STREAM_MODEL, inputs_of(x=chunk[None], h0=h, c0=c))
        h, c = result.as_numpy("h_n"), result.as_numpy("c_n")
        held.append(result)
    full = full_run(STREAM_MODEL, sequence)
    assert_chunks_equal_full_run(kept, full)
    assert_chunks_equal_full_run(held, full)
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "no live sequence 77"):  # it ended
        client.infer(STREAM_MODEL, inputs_of(x=chunks[0][None]), sequence_id=77)


def test_aio_stream_with_a_sequence(server, sequences):
    sequence = sequences[11]
    chunks = chunks_of(sequence, [5, len(sequence) - 5])

    async def requests():
        for i, chunk in enumerate(chunks):
            yield {"model_name": STREAM_MODEL, "inputs": inputs_of(x=chunk[None]), "sequence_id": "aio",
                   "sequence_start": i == 0, "sequence_end": i == len(chunks) - 1, "request_id": str(i)}

    async def run() -> list:
        client = tca.InferenceServerClient(server.target)
        try:
            answers = []
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                answers.append(result)
            return answers
        finally:
            await client.close()

    results = asyncio.run(run())
    assert [r.get_response().id for r in results] == ["0", "1"]
    assert_chunks_equal_full_run(results, full_run(STREAM_MODEL, sequence))


SEQUENCE_ERRORS = {  # case: (model, x rows, h0, sequence kwargs, code, fragments)
    "bidirectional": ("jv_bigru_attn", 1, False, {"sequence_id": 5, "sequence_start": True},
                      grpc.StatusCode.INVALID_ARGUMENT, ["sequence_id", "bidirectional"]),
    "two rows": (STREAM_MODEL, 2, False, {"sequence_id": 5, "sequence_start": True},
                 grpc.StatusCode.INVALID_ARGUMENT, ["input 'x'", "batch 1"]),
    "state and id": (STREAM_MODEL, 1, True, {"sequence_id": 5, "sequence_start": True},
                     grpc.StatusCode.INVALID_ARGUMENT, ["input 'h0'", "not both"]),
    "never started": (STREAM_MODEL, 1, False, {"sequence_id": 404},
                      grpc.StatusCode.FAILED_PRECONDITION, ["no live sequence 404", "sequence_start"]),
}


@pytest.mark.parametrize("case", SEQUENCE_ERRORS)
def test_sequence_errors(client, case):
    model, rows, with_state, control, code, fragments = SEQUENCE_ERRORS[case]
    arrays = {"x": np.zeros((rows, 3, 12), np.float32)}
    if with_state:
        arrays["h0"] = np.zeros((2, rows, 64), np.float32)
    with raises_status(code, *fragments):
        client.infer(model, inputs_of(**arrays), **control)


def test_idle_sequences_expire_and_live_ones_are_capped(sequences):
    """Sequence 1 sits idle past the timeout and ends; sequence 2's requests keep it alive; an ended or
    expired sequence frees its slot."""
    with threaded_server(REPOSITORY, sequence_idle_timeout_s=0.5, max_live_sequences=2) as s:
        client = tc.InferenceServerClient(s.target)
        x = inputs_of(x=sequences[0][None, :4])
        client.infer(STREAM_MODEL, x, sequence_id=1, sequence_start=True)
        client.infer(STREAM_MODEL, x, sequence_id=2, sequence_start=True)
        with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "live sequences", "max_live_sequences"):
            client.infer(STREAM_MODEL, x, sequence_id=3, sequence_start=True)
        client.infer(STREAM_MODEL, x, sequence_id=3, sequence_start=True, sequence_end=True)  # one-shot: no slot
        for _ in range(4):  # 0.8 s: sequence 2 is never idle for 0.5 s, sequence 1 is
            time.sleep(0.2)
            client.infer(STREAM_MODEL, x, sequence_id=2)
        with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "no live sequence 1", "sequence_idle_timeout_s"):
            client.infer(STREAM_MODEL, x, sequence_id=1)
        client.infer(STREAM_MODEL, x, sequence_id=4, sequence_start=True)  # sequence 1's slot is free again
        client.infer(STREAM_MODEL, x, sequence_id=2, sequence_end=True)
        client.infer(STREAM_MODEL, x, sequence_id=5, sequence_start=True)  # and sequence 2's
        client.close()


# --- streams: errors in-band -----------------------------------------------------------------------


def test_stream_errors_answer_in_band_and_the_stream_goes_on(client, sequences):
    callback = StreamAnswers()
    client.start_stream(callback=callback)
    try:
        client.async_stream_infer("jv_bigru_attn", inputs_of(x=sequences[0][None]), request_id="good-0")
        client.async_stream_infer("jv_bigru_attn", inputs_of(x=np.zeros((1, 3, 5), np.float32)), request_id="bad")
        client.async_stream_infer("nope", inputs_of(x=sequences[0][None]), request_id="missing")
        client.async_stream_infer("jv_bigru_attn", inputs_of(x=sequences[1][None]), request_id="good-1")
        answers = callback.take(4)
    finally:
        client.stop_stream()
    good = {r.get_response().id for r, e in answers if e is None}
    errors = sorted(e.message() for r, e in answers if e is not None)
    assert good == {"good-0", "good-1"}
    assert errors[0].startswith("INVALID_ARGUMENT: input 'x'") and errors[1].startswith("NOT_FOUND: model")


# --- the proto itself: stubs generated from protos/inference/ ------------------------------------


def raw_request(model: str, x: np.ndarray, lengths: np.ndarray | None = None, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    if lengths is not None:
        request.inputs.add(name="lengths", datatype="INT64", shape=lengths.shape)
        request.raw_input_contents.append(lengths.astype("<i8").tobytes())
    return request


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    [index] = [i for i, o in enumerate(response.outputs) if o.name == name]
    return np.frombuffer(response.raw_output_contents[index], "<f4").reshape(response.outputs[index].shape)


def test_generated_stubs_typed_contents_equal_raw(stub, sequences):
    x, lengths = padded(sequences[:3])
    typed = pb.ModelInferRequest(model_name="jv_bilstm_attn", outputs=[{"name": "logits"}, {"name": "label"}])
    typed.inputs.add(name="x", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.ravel().tolist())
    typed.inputs.add(name="lengths", datatype="INT64", shape=lengths.shape).contents.int64_contents.extend(
        lengths.tolist())
    from_typed = stub.ModelInfer(typed, timeout=30)
    from_raw = stub.ModelInfer(raw_request("jv_bilstm_attn", x, lengths), timeout=30)
    assert not from_typed.outputs[0].HasField("contents")  # answers always use raw_output_contents
    np.testing.assert_array_equal(output(from_typed, "logits"), output(from_raw, "logits"))
    labels = from_typed.raw_output_contents[1]  # BYTES: 4-byte little-endian length, then the bytes
    assert labels[:4] == (1).to_bytes(4, "little") and len(labels) == 3 * 5


RAW_ERRORS = {
    "byte count": (lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-4]),
                   ["input 'x'", "bytes of raw_input_contents", "do not match"]),
    "raw count": (lambda r: r.raw_input_contents.append(b"\0" * 8), ["raw_input_contents", "2 entries for 1 inputs"]),
    "typed count": (lambda r: (r.ClearField("raw_input_contents"), r.inputs[0].contents.fp32_contents.extend([1.0])),
                    ["input 'x'", "1 values in contents.fp32_contents", "36 values"]),
    "sequence_id kind": (lambda r: r.parameters["sequence_id"].CopyFrom(pb.InferParameter(double_param=1.5)),
                         ["parameters['sequence_id']", "double_param"]),
    "flag without id": (lambda r: r.parameters["sequence_end"].CopyFrom(pb.InferParameter(bool_param=True)),
                        ["parameters['sequence_end']", "needs a sequence_id"]),
    "classification": (lambda r: r.outputs.add(name="logits").parameters["classification"].CopyFrom(
        pb.InferParameter(int64_param=3)), ["classification extension is not served"]),
}


@pytest.mark.parametrize("case", RAW_ERRORS)
def test_generated_stubs_bad_requests(stub, case):
    spoil, fragments = RAW_ERRORS[case]
    request = raw_request("jv_lstm_stream", np.zeros((1, 3, 12), np.float32))
    spoil(request)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, *fragments):
        stub.ModelInfer(request, timeout=30)


def test_generated_stubs_stream_statistics_and_index(server, stub, sequences):
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="jv_bigru_attn"), timeout=10).model_stats[0]
    requests = [raw_request("jv_bigru_attn", s[None], id=str(i)) for i, s in enumerate(sequences[:5])]
    requests.insert(2, raw_request("jv_bigru_attn", np.zeros((1, 2, 3), np.float32), id="bad"))
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    assert len(answers) == 6
    failed = [a for a in answers if a.error_message]
    assert [a.infer_response.id for a in failed] == ["bad"] and "input 'x'" in failed[0].error_message
    assert sorted(a.infer_response.id for a in answers if not a.error_message) == ["0", "1", "2", "3", "4"]
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="jv_bigru_attn", version="1"), timeout=10)
    [stats] = after.model_stats
    assert (stats.name, stats.version) == ("jv_bigru_attn", "1")
    assert stats.inference_stats.success.count - before.inference_stats.success.count == 5
    assert stats.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert stats.inference_count - before.inference_count == 5 and stats.last_inference > 0
    assert stats.inference_stats.queue.count - before.inference_stats.queue.count == 5  # one wait per request
    assert stats.inference_stats.compute_infer.ns > 0
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10)
    assert {s.name for s in everything.model_stats} == set(MODELS)
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10)
    assert {(m.name, m.version, m.state) for m in index.models} == {(m, "1", "READY") for m in MODELS}


def test_statistics_are_kept_per_model_version(tmp_path, sequences):
    """Two versions of one model: calls to version 1 (this protocol) and version 2 (seqserve.v1) count
    only on the version that ran them."""
    repository = versioned_repository(tmp_path, "jv_bigru_attn", (1, 2))
    with threaded_server(repository) as s, grpc.insecure_channel(s.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for sequence in sequences[:3]:
            stub.ModelInfer(raw_request("jv_bigru_attn", sequence[None], model_version="1"), timeout=30)
        with SeqserveClient(s.target) as v1_client:
            v1_client.encode("jv_bigru_attn", sequences[:2], version=2)
        stats = {int(m.version): m for m in
                 stub.ModelStatistics(pb.ModelStatisticsRequest(name="jv_bigru_attn"), timeout=10).model_stats}
    assert sorted(stats) == [1, 2]
    assert [stats[v].inference_stats.success.count for v in (1, 2)] == [3, 0]  # this protocol's requests
    assert [stats[v].inference_count for v in (1, 2)] == [3, 2]  # sequences run, both protocols
    assert [stats[v].inference_stats.queue.count for v in (1, 2)] == [3, 1]  # one wait per request
    assert stats[1].last_inference > 0 and stats[2].last_inference == 0
    assert all(stats[v].execution_count >= 1 and stats[v].inference_stats.compute_infer.ns > 0 for v in (1, 2))


def test_undecodable_bytes_are_invalid_argument(server):
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "ModelInfer"):
            call(b"\x0a\x04\xff\xfe\xfd\xfc", timeout=10)  # model_name holding invalid UTF-8


def test_health_and_reflection_name_the_service(server):
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
        [listed] = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter(ask), timeout=5))
        assert SERVICE in {s.name for s in listed.list_services_response.service}


def test_a_stream_ends_at_an_undecodable_message_after_answering_the_ones_before(server, sequences):
    good = raw_request("jv_bigru_attn", sequences[0][None], id="good").SerializeToString()
    with grpc.insecure_channel(server.target) as channel:
        call = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer", request_serializer=lambda b: b,
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
        answers = call(iter([good, b"\x0a\x04\xff\xfe\xfd\xfc"]), timeout=30)
        first = next(answers)
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT):
            next(answers)
    assert first.infer_response.id == "good" and not first.error_message


def test_streams_count_against_max_concurrent_streams(sequences):
    with threaded_server(REPOSITORY, max_concurrent_streams=1) as s, grpc.insecure_channel(s.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        requests: queue.Queue = queue.Queue()
        first = stub.ModelStreamInfer(iter(requests.get, None), timeout=30)
        requests.put(raw_request("jv_bigru_attn", sequences[0][None], id="open"))
        assert next(first).infer_response.id == "open"  # the first stream is open
        with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_concurrent_streams"):
            list(stub.ModelStreamInfer(iter([raw_request("jv_bigru_attn", sequences[0][None])]), timeout=30))
        requests.put(None)
        assert list(first) == []


def test_a_stream_stops_reading_a_client_that_does_not_read_its_answers():
    in_flight = 4
    with threaded_server(REPOSITORY, max_stream_in_flight=in_flight) as s:
        # No BDP probing: the client's receive window stays at its initial size, so unread answers
        # fill it at once and what the server holds is what it has read.
        channel = grpc.insecure_channel(s.target, options=[("grpc.http2.bdp_probe", 0)])
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        big = raw_request("jv_bilstm_attn", np.ones((1, 500, 12), np.float32), outputs=[{"name": "outputs"}])
        sent = 30  # each answer ~250 kB
        answers = stub.ModelStreamInfer(iter([big] * sent), timeout=120)
        assert_reading_held(s, "ModelStreamInfer", in_flight, answers, sent)
        channel.close()
