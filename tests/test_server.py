"""The gRPC service end to end: a real server on a free port, real channels, the committed models."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reference import random_sequences, reference, reference_labels
from rpc import raises_status
from servers import REPOSITORY, ROOT, ServerProcess, assert_reading_held, threaded_server, wait_until

from seqserve.client import EncodeResult, SeqserveClient, encode_request
from seqserve.inference import length_groups
from seqserve.repository import latest_version
from seqserve.server import config as server_config
from seqserve.server.config import ServerConfig
from seqserve.server.registry import ModelRegistry
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

BI_MODELS = ["jv_bilstm_attn", "jv_bigru_attn"]
STREAM_MODEL = "jv_lstm_stream"
ALL_OUTPUTS = ["outputs", "hidden", "attention", "logits"]


@pytest.fixture(scope="module")
def test_sequences() -> list[np.ndarray]:
    """370 sequences of 12-29 steps of 12 features (JapaneseVowels' test split has 370 of 7-29)."""
    return random_sequences(370, shortest=12)


@pytest.fixture(scope="module")
def server():
    with threaded_server(REPOSITORY, max_sequence_length=600, max_sequences_per_request=64,
                         max_stream_buffer_steps=100, max_message_bytes=4 * 1024 * 1024) as s:
        yield s


@pytest.fixture()
def client(server):
    with SeqserveClient(server.target) as c:
        yield c


# --- model listing -----------------------------------------------------------------------------


def test_list_models_describes_every_committed_model(client):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"jv_bilstm_attn", "jv_bigru_attn", "jv_lstm_stream"}
    bilstm = models["jv_bilstm_attn"]
    assert (bilstm.cell, bilstm.bidirectional, bilstm.layers, bilstm.input_features) == ("lstm", True, 2, 12)
    assert bilstm.attention == "additive" and not bilstm.streaming
    assert list(bilstm.class_labels) == [str(i) for i in range(1, 10)]
    assert bilstm.parity.passed and bilstm.parity.max_abs_error < 1e-4
    assert [t.name for t in bilstm.outputs] == ["outputs", "h_n", "c_n", "context", "attention", "logits"]
    assert models["jv_lstm_stream"].streaming
    assert list(models["jv_lstm_stream"].versions) == [1]


def test_get_model_and_not_found(client):
    assert client.get_model("jv_bigru_attn").cell == "gru"
    assert client.get_model("jv_bigru_attn", version=1).version == 1
    with raises_status(grpc.StatusCode.NOT_FOUND, "model", "nope"):
        client.get_model("nope")
    with raises_status(grpc.StatusCode.NOT_FOUND, "version", "7"):
        client.get_model("jv_bigru_attn", version=7)
    with raises_status(grpc.StatusCode.NOT_FOUND, "model"):
        client.encode("nope", [np.zeros((3, 12), np.float32)])


# --- Encode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", BI_MODELS + [STREAM_MODEL])
def test_encode_equals_onnxruntime(client, test_sequences, model):
    sequences = [test_sequences[i] for i in (0, 5, 17, 100, 250)]  # unsorted lengths
    results = client.encode(model, sequences, ids=list("abcde"), outputs=ALL_OUTPUTS + (
        ["step_logits"] if model == STREAM_MODEL else []))
    ort_out = reference(model, sequences)
    assert [r.id for r in results] == list("abcde")
    for i, (seq, r) in enumerate(zip(sequences, results, strict=True)):
        T = len(seq)
        expected = {
            "outputs": ort_out["outputs"][i, :T], "h_n": ort_out["h_n"][:, i], "logits": ort_out["logits"][i],
        }
        if "c_n" in ort_out:
            expected["c_n"] = ort_out["c_n"][:, i]
        if "attention" in ort_out:
            expected |= {"attention": ort_out["attention"][i, :T], "context": ort_out["context"][i]}
        if "step_logits" in ort_out:
            expected["step_logits"] = ort_out["step_logits"][i, :T]
        for name, value in expected.items():
            np.testing.assert_allclose(getattr(r, name), value, atol=1e-6, rtol=0, err_msg=name)
        np.testing.assert_allclose(r.probabilities.sum(), 1.0, atol=1e-6)
        assert r.label_index == int(ort_out["logits"][i].argmax())
        assert r.label == str(r.label_index + 1)


@pytest.mark.parametrize("model", BI_MODELS + [STREAM_MODEL])
def test_encode_agrees_with_the_pytorch_checkpoint(client, test_sequences, model):
    torch = pytest.importorskip("torch", reason="comparing with the PyTorch checkpoint needs torch (train extra)")
    from seqserve.model.checkpoint import load_checkpoint

    sequences = [test_sequences[i] for i in (0, 5, 17, 100, 250)]
    encoder, _ = load_checkpoint(latest_version(REPOSITORY, model).path / "checkpoint.pt")
    lengths = torch.tensor([len(s) for s in sequences])  # (B,)
    x = torch.zeros(len(sequences), int(lengths.max()), encoder.config.input_size)  # (B, T, F)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = torch.from_numpy(s)
    with torch.no_grad():
        logits = encoder(x, lengths).as_dict()["logits"].numpy()  # (B, C)
    for i, r in enumerate(client.encode(model, sequences, outputs=["logits"])):
        np.testing.assert_allclose(r.logits, logits[i], atol=1e-4, rtol=1e-4)
        assert r.label_index == int(logits[i].argmax())


def test_encode_returns_only_what_was_asked(client, test_sequences):
    [default] = client.encode("jv_bilstm_attn", [test_sequences[0]])
    assert default.outputs is None and default.step_logits is None  # per-step tensors are opt-in
    assert default.h_n.shape == (4, 64) and default.c_n.shape == (4, 64)
    assert default.attention.shape == (len(test_sequences[0]),) and default.context.shape == (128,)
    [lean] = client.encode("jv_bilstm_attn", [test_sequences[0]], outputs=["logits"])
    assert lean.h_n is None and lean.attention is None and lean.logits.shape == (9,)
    assert lean.probabilities.shape == (9,)


def test_many_concurrent_clients_with_different_lengths(server, test_sequences):
    rng = np.random.default_rng(0)
    picks = rng.choice(len(test_sequences), size=96, replace=False)
    sequences = [test_sequences[i] for i in picks]
    expected = reference("jv_bigru_attn", sequences)

    def call(i: int):
        with SeqserveClient(server.target) as c:
            return c.encode("jv_bigru_attn", [sequences[i]], outputs=["logits"])[0]

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(call, range(len(sequences))))
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.logits, expected["logits"][i], atol=1e-5)


def test_batching_on_and_off_give_the_same_results(test_sequences):
    """48 one-sequence calls queued while the batcher is held, then released: with batching they run as
    exactly the length groups of one batch, without it one run each; the answers agree."""
    sequences = test_sequences[:48]
    answers = {}
    for batching in (True, False):
        with threaded_server(REPOSITORY, batching=batching) as s, SeqserveClient(s.target) as c:
            batcher = s.sync(lambda: s.server.registry.get("jv_bilstm_attn").batcher)
            s.sync(batcher.hold)
            stub = pb_grpc.SeqserveServiceStub(c.channel)
            calls = [stub.Encode.future(encode_request("jv_bilstm_attn", [q], outputs=ALL_OUTPUTS), timeout=60)
                     for q in sequences]
            wait_until(lambda: s.sync(lambda: batcher.open_requests) == len(sequences))  # noqa: B023 (run at once)
            s.sync(batcher.release)
            answers[batching] = [EncodeResult.from_proto(call.result().results[0]) for call in calls]
            registry, labels = s.server.metrics.registry, {"model": "jv_bilstm_attn"}
            runs = registry.get_sample_value("seqserve_batch_size_count", labels)
            assert registry.get_sample_value("seqserve_batch_size_sum", labels) == len(sequences)
            if batching:
                groups = length_groups(np.array([len(q) for q in sequences]), max_waste=s.config.padding_waste,
                                       min_split=s.config.padding_min_split)
                assert runs == len(groups) < len(sequences)
            else:
                assert runs == len(sequences)
    for on, off in zip(answers[True], answers[False], strict=True):
        assert on.label == off.label
        for name in ("outputs", "h_n", "c_n", "attention", "context", "logits"):
            # the head's GEMM may take another kernel at another batch size: last-bit differences only
            np.testing.assert_allclose(getattr(on, name), getattr(off, name), atol=1e-6, rtol=0, err_msg=name)


# --- EncodeStream ------------------------------------------------------------------------------


def test_encode_stream_answers_every_request_with_its_id(client, test_sequences):
    requests = [(f"r{i}", encode_request("jv_bigru_attn", test_sequences[i : i + 3])) for i in range(20)]
    bad = ("bad", encode_request("jv_bigru_attn", [np.zeros((4, 5), np.float32)]))
    answers = dict(client.encode_stream(requests[:10] + [bad] + requests[10:]))
    assert set(answers) == {f"r{i}" for i in range(20)} | {"bad"}
    assert answers["bad"].code == "INVALID_ARGUMENT" and "sequences[0].steps" in answers["bad"].message
    expected = reference("jv_bigru_attn", test_sequences[:22])
    for i in range(20):
        got = answers[f"r{i}"]
        assert len(got) == 3
        for j, r in enumerate(got):
            assert r.label_index == int(expected["logits"][i + j].argmax())


# --- StreamSequence ----------------------------------------------------------------------------


def stream_chunks(sequence: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    cuts = np.cumsum(sizes)[:-1]
    return np.split(sequence, cuts)


def test_streaming_chunks_equal_one_full_run(client, test_sequences):
    sequence = np.concatenate(test_sequences[:3])  # a long utterance, 3 joined
    chunks = stream_chunks(sequence, [7, 1, 0, 13, len(sequence) - 21])
    updates = list(client.stream_sequence(STREAM_MODEL, chunks, outputs=["outputs", "hidden", "step_logits"]))
    [full] = client.encode(STREAM_MODEL, [sequence], outputs=["outputs", "hidden", "step_logits"])
    assert len(updates) == len(chunks)
    assert [u.steps_seen for u in updates] == list(np.cumsum([len(c) for c in chunks]))
    assert [u.final for u in updates] == [False] * (len(chunks) - 1) + [True]
    np.testing.assert_array_equal(np.concatenate([u.result.outputs for u in updates]), full.outputs)
    np.testing.assert_array_equal(np.concatenate([u.result.step_logits for u in updates]), full.step_logits)
    np.testing.assert_array_equal(updates[-1].result.h_n, full.h_n)
    np.testing.assert_array_equal(updates[-1].result.c_n, full.c_n)
    assert updates[-1].result.label == full.label
    # the empty chunk passes the state through and keeps the running prediction
    np.testing.assert_array_equal(updates[2].result.h_n, updates[1].result.h_n)
    assert updates[2].result.label == updates[1].result.label


def test_stream_state_continues_on_a_second_server(client, test_sequences):
    sequence = test_sequences[42]
    head, tail = sequence[:9], sequence[9:]
    [first] = list(client.stream_sequence(STREAM_MODEL, [head]))
    assert first.state.steps_seen == 9 and list(first.state.h.shape) == [2, 64]
    with threaded_server(REPOSITORY) as other, SeqserveClient(other.target) as c2:
        [rest] = list(c2.stream_sequence(STREAM_MODEL, [tail], initial_state=first.state, outputs=["hidden"]))
    [full] = client.encode(STREAM_MODEL, [sequence], outputs=["hidden"])
    assert rest.steps_seen == len(sequence)
    np.testing.assert_array_equal(rest.result.h_n, full.h_n)
    assert rest.result.label == full.label


def test_bidirectional_stream_is_answered_at_the_end(client, test_sequences):
    sequence = test_sequences[7]
    updates = list(client.stream_sequence("jv_bilstm_attn", stream_chunks(sequence, [5, 5, len(sequence) - 10])))
    [full] = client.encode("jv_bilstm_attn", [sequence], outputs=["hidden", "attention", "logits"])
    assert len(updates) == 1 and updates[0].final and updates[0].state is None
    np.testing.assert_allclose(updates[0].result.logits, full.logits, atol=1e-6)
    np.testing.assert_allclose(updates[0].result.attention, full.attention, atol=1e-7)


def test_bidirectional_stream_closed_without_end_is_answered_at_close(client, test_sequences):
    sequence = test_sequences[7]
    stub = pb_grpc.SeqserveServiceStub(client.channel)
    chunks = [pb.StreamSequenceRequest(model="jv_bilstm_attn", steps=to_tensor(sequence[:5])),
              pb.StreamSequenceRequest(steps=to_tensor(sequence[5:]))]  # no `end`: the client just closes
    [answer] = list(stub.StreamSequence(iter(chunks), timeout=10))
    [full] = client.encode("jv_bilstm_attn", [sequence], outputs=["logits"])
    assert answer.final and answer.steps_seen == len(sequence)
    np.testing.assert_allclose(EncodeResult.from_proto(answer.result).logits, full.logits, atol=1e-6)
    empty = [pb.StreamSequenceRequest(model="jv_bilstm_attn", steps=to_tensor(np.zeros((0, 12), np.float32)))]
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "empty sequence"):
        list(stub.StreamSequence(iter(empty), timeout=10))


def test_stream_chunk_limit_counts_empty_chunks():
    with threaded_server(REPOSITORY, max_stream_chunks=5) as s, SeqserveClient(s.target) as c:
        empty = np.zeros((0, 12), np.float32)
        with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "chunks", "6", "max_stream_chunks"):
            list(c.stream_sequence("jv_bilstm_attn", [empty] * 5 + [np.ones((3, 12), np.float32)]))
        assert len(list(c.stream_sequence("jv_bilstm_attn", [empty] * 4 + [np.ones((3, 12), np.float32)]))) == 1


def test_bidirectional_stream_buffer_limit(client):
    chunks = [np.zeros((60, 12), np.float32)] * 2  # server fixture allows 100 buffered steps
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "buffered steps", "max_stream_buffer_steps"):
        list(client.stream_sequence("jv_bilstm_attn", chunks))


def test_stream_rejects_a_foreign_state(client, test_sequences):
    [first] = list(client.stream_sequence(STREAM_MODEL, [test_sequences[0][:4]]))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "initial_state"):
        list(client.stream_sequence("jv_bilstm_attn", [test_sequences[0]], initial_state=first.state))
    bad = pb.State(model=STREAM_MODEL, h=to_tensor(np.zeros((3, 64), np.float32)))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "initial_state.h", "[2, 64]"):
        list(client.stream_sequence(STREAM_MODEL, [test_sequences[0]], initial_state=bad))


# --- bad input: the right code, the field named, and nothing else breaks ------------------------


def raw_sequence(shape: list[int], data: bytes) -> pb.Sequence:
    return pb.Sequence(steps=pb.Tensor(shape=shape, data=data))


BAD_INPUTS = {
    "wrong feature count": (raw_sequence([5, 11], np.zeros((5, 11), np.float32).tobytes()),
                            grpc.StatusCode.INVALID_ARGUMENT, ["sequences[0].steps", "11 features", "12"]),
    "empty sequence": (raw_sequence([0, 12], b""), grpc.StatusCode.INVALID_ARGUMENT,
                       ["sequences[0].steps", "empty"]),
    "NaN": (raw_sequence([3, 12], np.full((3, 12), np.nan, np.float32).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT, ["sequences[0].steps", "NaN"]),
    "Inf": (raw_sequence([3, 12], np.full((3, 12), np.inf, np.float32).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT, ["sequences[0].steps", "Inf"]),
    "bad shape": (raw_sequence([36], np.zeros(36, np.float32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT,
                  ["sequences[0].steps", "shape"]),
    "byte count": (raw_sequence([3, 12], b"\0" * 10), grpc.StatusCode.INVALID_ARGUMENT,
                   ["sequences[0].steps", "10 bytes", "144 bytes"]),
    "too long": (raw_sequence([601, 12], np.zeros((601, 12), np.float32).tobytes()),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, ["sequences[0].steps", "601", "600", "max_sequence_length"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_alone(server, client, test_sequences, case):
    sequence, code, fragments = BAD_INPUTS[case]
    stub = pb_grpc.SeqserveServiceStub(client.channel)
    good = test_sequences[:40]
    expected = reference("jv_bilstm_attn", good)
    stop = threading.Event()

    def good_traffic(i: int):
        results = []
        with SeqserveClient(server.target) as c:
            while not stop.is_set() or not results:
                results.append(c.encode("jv_bilstm_attn", [good[i]], outputs=["logits"])[0])
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(good_traffic, i) for i in range(8)]
        with raises_status(code, *fragments):
            stub.Encode(pb.EncodeRequest(model="jv_bilstm_attn", sequences=[sequence]), timeout=10)
        time.sleep(0.05)
        stop.set()
        for i, future in enumerate(futures):
            for r in future.result():
                np.testing.assert_allclose(r.logits, expected["logits"][i], atol=1e-5)


def test_limits_on_sequences_and_message_size(client, test_sequences):
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "sequences", "65", "64", "max_sequences_per_request"):
        client.encode("jv_bigru_attn", test_sequences[:65])
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "sequences", "no sequences"):
        client.encode("jv_bigru_attn", [])
    huge = [np.zeros((500, 12), np.float32)] * 60  # ~1.4 MB per 10 sequences, 4 MiB limit
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED):
        client.encode("jv_bigru_attn", huge * 3)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "OUTPUT_STEP_LOGITS"):
        client.encode("jv_bigru_attn", [test_sequences[0]], outputs=["step_logits"])


def test_concurrent_stream_limit():
    with threaded_server(REPOSITORY, max_concurrent_streams=1) as s, SeqserveClient(s.target) as c:
        held = threading.Event()
        release = threading.Event()

        def slow_chunks():
            yield np.zeros((3, 12), np.float32)
            held.set()
            release.wait(10)
            yield np.zeros((3, 12), np.float32)

        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(lambda: list(c.stream_sequence(STREAM_MODEL, slow_chunks())))
            assert held.wait(10)
            time.sleep(0.2)  # let the first chunk reach the server
            with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "streams", "max_concurrent_streams"):
                list(c.stream_sequence(STREAM_MODEL, [np.zeros((3, 12), np.float32)]))
            release.set()
            assert len(first.result(10)) == 2
        # the slot is free again
        assert len(list(c.stream_sequence(STREAM_MODEL, [np.zeros((3, 12), np.float32)]))) == 1


# --- deadlines, cancellation, health, reflection, metrics -------------------------------------


def test_deadline_and_cancellation_leave_the_server_healthy(server, client, test_sequences):
    stub = pb_grpc.SeqserveServiceStub(client.channel)
    big = encode_request("jv_bilstm_attn", [np.random.default_rng(0).standard_normal((600, 12), np.float32)] * 64,
                         outputs=["logits"])  # within the answer-size limit: real work to cancel
    with raises_status(grpc.StatusCode.DEADLINE_EXCEEDED):
        stub.Encode(big, timeout=0.001)
    batcher = server.sync(lambda: server.server.registry.get("jv_bilstm_attn").batcher)
    cancelled = server.requests("Encode", "CANCELLED")
    server.sync(batcher.hold)
    try:
        future = stub.Encode.future(encode_request("jv_bilstm_attn", [test_sequences[3]]), timeout=30)
        wait_until(lambda: server.sync(lambda: batcher.open_requests) == 1)  # the call waits in the server
        assert future.cancel()
        wait_until(lambda: server.requests("Encode", "CANCELLED") == cancelled + 1)  # and ended there, cancelled
    finally:
        server.sync(batcher.release)
    assert future.cancelled()
    [r] = client.encode("jv_bilstm_attn", [test_sequences[3]], outputs=["logits"])
    np.testing.assert_allclose(r.logits, reference("jv_bilstm_attn", [test_sequences[3]])["logits"][0], atol=1e-6)


def test_health(client):
    """Health answers for the server and the service (reflection: tests/test_reflection.py)."""
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "seqserve.v1.SeqserveService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_endpoint_counts_requests_by_code(test_sequences):
    with threaded_server(REPOSITORY) as s, SeqserveClient(s.target) as c:
        port = s.server.metrics.serve(0, addr="127.0.0.1")
        c.encode("jv_bigru_attn", test_sequences[:3])
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT):
            c.encode("jv_bigru_attn", [np.zeros((3, 2), np.float32)])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'seqserve_requests_total{code="OK",method="Encode"} 1.0' in text
    assert 'seqserve_requests_total{code="INVALID_ARGUMENT",method="Encode"} 1.0' in text
    assert 'seqserve_batch_size_count{model="jv_bigru_attn"}' in text
    assert "seqserve_queue_seconds_bucket" in text and "seqserve_request_seconds_bucket" in text


def test_broken_models_are_skipped_and_the_rest_serve(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPOSITORY, repo)
    (repo / "jv_bigru_attn" / "1" / "model.onnx").write_bytes(b"not an onnx file")  # sha256 mismatch
    (repo / "jv_lstm_stream" / "2").mkdir()
    (repo / "jv_lstm_stream" / "2" / "model.onnx").write_bytes(b"x")  # no metadata.json
    with threaded_server(repo) as s, SeqserveClient(s.target) as c:
        assert [m.name for m in c.list_models()] == ["jv_bilstm_attn", "jv_lstm_stream"]
        assert len(s.server.registry.problems) == 2
        assert any("sha256" in p for p in s.server.registry.problems)
        assert any("metadata.json" in p for p in s.server.registry.problems)
        with raises_status(grpc.StatusCode.NOT_FOUND, "jv_bigru_attn"):
            c.encode("jv_bigru_attn", [np.zeros((3, 12), np.float32)])


def test_health_and_requests_while_models_load(monkeypatch):
    """Until every model is loaded and warmed up: health NOT_SERVING, requests UNAVAILABLE."""
    loading = threading.Event()
    release = threading.Event()
    real_load = ModelRegistry.load

    def slow_load(self):
        loading.set()
        release.wait(30)
        real_load(self)

    monkeypatch.setattr(ModelRegistry, "load", slow_load)
    zeros = np.zeros((3, 12), np.float32)
    with threaded_server(REPOSITORY, ready=False) as s:
        try:
            assert loading.wait(30)  # bound, loading its models
            client = SeqserveClient(s.target)
            health = health_pb2_grpc.HealthStub(client.channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            with raises_status(grpc.StatusCode.UNAVAILABLE, "loading"):
                client.encode("jv_bigru_attn", [zeros])
        finally:
            release.set()
        with client:
            s.starting.result(30)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            assert client.encode("jv_bigru_attn", [zeros])[0].label == reference_labels("jv_bigru_attn", [zeros])[0]


# --- process lifecycle: health transitions and graceful shutdown ------------------------------


def test_graceful_shutdown_finishes_in_flight_requests(test_sequences):
    proc = ServerProcess(REPOSITORY, "--max-queue-delay-ms", "50", "--grace-seconds", "60")
    try:
        channel = grpc.insecure_channel(proc.target)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.SeqserveServiceStub(channel)
        long_request = encode_request("jv_bilstm_attn", [np.zeros((1000, 12), np.float32)] * 16, outputs=["logits"])
        futures = [stub.Encode.future(long_request, timeout=120) for _ in range(4)]
        time.sleep(0.5)  # the requests are in flight
        proc.proc.send_signal(15)
        results = [f.result() for f in futures]  # every in-flight call completes
        assert all(len(r.results) == 16 for r in results)
        assert proc.wait() == 0
        with raises_status(grpc.StatusCode.UNAVAILABLE):
            stub.Encode(long_request, timeout=2)
    finally:
        proc.kill()


@pytest.mark.parametrize("concurrent, runs, run_threads", [(0, 8, 1), (1, 1, 8), (2, 2, 4), (3, 3, 2), (16, 16, 1)])
def test_runs_at_once_share_the_intra_op_threads(monkeypatch, concurrent, runs, run_threads):
    """--concurrent-batches runs at once, each on threads / runs intra-op threads; 0: one run per thread."""
    monkeypatch.setattr(server_config, "physical_cores", lambda: 8)
    config = ServerConfig(concurrent_batches=concurrent)
    assert (config.threads, config.batch_runs, config.run_threads) == (8, runs, run_threads)
    assert config.batch_policy.concurrent_batches == runs


@pytest.mark.parametrize("flags, loop", [((), "uvloop"), (("--no-uvloop",), "asyncio")])
def test_the_server_runs_on_the_event_loop_configured(flags, loop):
    """uvloop by default (less CPU per call), asyncio's own with --no-uvloop; both answer alike."""
    proc = ServerProcess(REPOSITORY, *flags)
    try:
        assert proc.logs[-1]["event_loop"] == loop
        steps = np.random.default_rng(0).standard_normal((9, 12)).astype(np.float32)
        with SeqserveClient(proc.target) as client:
            result = client.encode("jv_bilstm_attn", [steps])[0]
        assert result.label == reference_labels("jv_bilstm_attn", [steps])[0]
        assert np.isclose(result.probabilities.sum(), 1.0, atol=1e-5)
        assert proc.terminate() == 0
    finally:
        proc.kill()


def test_health_turns_not_serving_on_shutdown():
    proc = ServerProcess(REPOSITORY)
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(proc.target))
        watch = health.Watch(health_pb2.HealthCheckRequest(service="seqserve.v1.SeqserveService"), timeout=30)
        statuses = [next(watch).status]
        proc.proc.send_signal(15)
        try:
            for reply in watch:
                statuses.append(reply.status)
        except grpc.RpcError:
            pass  # the server closed the watch as it stopped
        assert proc.wait() == 0
        assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert [e["msg"] for e in proc.logs][-2:] == ["shutting down", "stopped"]
    finally:
        proc.kill()


# --- start-up failures: one line naming the setting, exit 2 ---------------------------------


def start_failure(*args: str) -> tuple[int, list[str]]:
    """Run `python -m server` expecting it to refuse to start; returns its exit status and output lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "seqserve.server", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


@pytest.mark.parametrize("setting", ["port", "metrics-port"])
def test_a_port_in_use_is_one_line_naming_the_setting(setting):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ports = {"port": "0", "metrics-port": "0"} | {setting: port}
        code, lines = start_failure("--model-repository", str(REPOSITORY),
                                    "--port", ports["port"], "--metrics-port", ports["metrics-port"])
    assert code == 2
    [line] = lines
    entry = json.loads(line)
    assert entry["level"] == "error" and f"--{setting} {port}" in entry["msg"], entry


def test_an_empty_or_missing_repository_refuses_to_start(tmp_path):
    for repository in (tmp_path, tmp_path / "missing"):
        code, [line] = start_failure("--model-repository", str(repository), "--port", "0", "--metrics-port", "0")
        assert code == 2 and f"--model-repository {repository}" in json.loads(line)["msg"]
    with threaded_server(tmp_path, allow_empty=True) as s, SeqserveClient(s.target) as c:
        assert c.list_models() == []


# --- hardening: a dead batcher, back-pressure, the concurrent-call cap, calls after SIGTERM ---------


def test_a_dead_batcher_turns_only_its_model_unavailable():
    with threaded_server(REPOSITORY) as s, SeqserveClient(s.target) as c:
        batcher = s.sync(lambda: s.server.registry.get("jv_bigru_attn").batcher)

        async def broken_collect(first):
            raise ValueError("a bug in the batcher")

        s.sync(lambda: setattr(batcher, "_collect", broken_collect))
        health = health_pb2_grpc.HealthStub(c.channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert status("jv_bigru_attn") == health_pb2.HealthCheckResponse.SERVING
        with raises_status(grpc.StatusCode.UNAVAILABLE, "jv_bigru_attn", "not ready"):
            c.encode("jv_bigru_attn", [np.zeros((3, 12), np.float32)])
        wait_until(lambda: status("jv_bigru_attn") == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert status("jv_bigru_attn/1") == health_pb2.HealthCheckResponse.NOT_SERVING
        with raises_status(grpc.StatusCode.UNAVAILABLE, "not ready"):
            c.encode("jv_bigru_attn", [np.zeros((3, 12), np.float32)])
        assert status("jv_bilstm_attn") == health_pb2.HealthCheckResponse.SERVING
        assert status("") == health_pb2.HealthCheckResponse.SERVING
        zeros = np.zeros((3, 12), np.float32)
        assert c.encode("jv_bilstm_attn", [zeros])[0].label == reference_labels("jv_bilstm_attn", [zeros])[0]


def test_encode_stream_stops_reading_a_client_that_does_not_read_its_answers():
    in_flight = 4
    with threaded_server(REPOSITORY, max_stream_in_flight=in_flight) as s:
        # No BDP probing: the client's receive window stays at its initial size, so unread answers
        # fill it at once and what the server holds is what it has read.
        channel = grpc.insecure_channel(s.target, options=[("grpc.http2.bdp_probe", 0)])
        stub = pb_grpc.SeqserveServiceStub(channel)
        big = encode_request("jv_bilstm_attn", [np.ones((500, 12), np.float32)], outputs=["outputs"])  # ~250 kB answer
        sent = 30
        answers = stub.EncodeStream(iter(pb.EncodeStreamRequest(request_id=str(i), request=big) for i in range(sent)),
                                    timeout=120)
        assert_reading_held(s, "EncodeStream", in_flight, answers, sent)
        channel.close()


def test_concurrent_call_cap():
    with threaded_server(REPOSITORY, max_concurrent_rpcs=2) as s, SeqserveClient(s.target) as c:
        batcher = s.sync(lambda: s.server.registry.get("jv_bigru_attn").batcher)
        s.sync(batcher.hold)
        stub = pb_grpc.SeqserveServiceStub(c.channel)
        request = encode_request("jv_bigru_attn", [np.zeros((3, 12), np.float32)])
        held = [stub.Encode.future(request, timeout=30) for _ in range(2)]
        wait_until(lambda: s.sync(lambda: batcher.open_requests) == 2)
        with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED):
            stub.Encode(request, timeout=10)
        s.sync(batcher.release)
        assert all(len(f.result().results) == 1 for f in held)


def test_calls_after_sigterm_get_unavailable_never_cancelled(test_sequences):
    """Calls that arrive while the server drains (drain_seconds after SIGTERM) are turned away with
    UNAVAILABLE, which clients retry elsewhere; the call in flight at SIGTERM finishes."""
    proc = ServerProcess(REPOSITORY, "--grace-seconds", "30", "--drain-seconds", "3")
    try:
        channel = grpc.insecure_channel(proc.target)
        stub = pb_grpc.SeqserveServiceStub(channel)
        long_call = stub.Encode.future(
            encode_request("jv_bilstm_attn", [np.zeros((2000, 12), np.float32)] * 32, outputs=["logits"]), timeout=120)
        short = encode_request("jv_bigru_attn", test_sequences[:2])
        codes: list[grpc.StatusCode] = []
        signalled = threading.Event()

        def hammer():
            deadline = None
            while deadline is None or time.monotonic() < deadline:
                if signalled.is_set() and deadline is None:
                    deadline = time.monotonic() + 1.0  # well inside the drain window
                try:
                    stub.Encode(short, timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

        with ThreadPoolExecutor(max_workers=4) as pool:
            workers = [pool.submit(hammer) for _ in range(4)]
            time.sleep(0.5)
            proc.proc.send_signal(15)
            signalled.set()
            for w in workers:
                w.result()
        assert len(long_call.result().results) == 32  # in flight at SIGTERM: finished
        assert proc.wait() == 0
        assert grpc.StatusCode.CANCELLED not in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(codes)
        assert grpc.StatusCode.UNAVAILABLE in codes
        channel.close()
    finally:
        proc.kill()


@pytest.mark.parametrize(("path", "kind"), [
    ("/grpc.health.v1.Health/Check", "unary"), ("/grpc.health.v1.Health/Watch", "server-stream"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi"),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "bidi"),
])
def test_health_and_reflection_refuse_undecodable_bytes(client, path, kind):
    bad = b"\x0a\x04\xff\xfe\xfd\xfc"  # a string field holding invalid UTF-8
    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    calls = {"unary": lambda: client.channel.unary_unary(path, **raw)(bad, timeout=5),
             "server-stream": lambda: list(client.channel.unary_stream(path, **raw)(bad, timeout=5)),
             "bidi": lambda: list(client.channel.stream_stream(path, **raw)(iter([bad]), timeout=5))}
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not a valid"):
        calls[kind]()
