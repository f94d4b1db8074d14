"""Big calls side by side (--parallel-call-min): a call of many sequences, alone in its round, runs as one
part per intra-op thread on one-thread sessions, each in a lane thread, while the event loop goes on.

The parts are cut by length and balanced; the answers are those of onnxruntime on the whole padded batch
(every output, initial states included); the path is taken exactly when it should be, as counted by
seqserve_side_by_side_calls. The batcher runs here on real sessions (2 threads, whatever the machine's
cores), then the server end to end over the Open Inference Protocol.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as tc
from reference import padded, random_sequences, reference
from servers import REPOSITORY, threaded_server

from seqserve.cpu import physical_cores
from seqserve.inference import Packed, PackedOutputs, per_sequence
from seqserve.repository import latest_version
from seqserve.server.batching import Batcher, BatchPolicy, balanced_parts
from seqserve.server.metrics import Metrics
from seqserve.server.runtime import ModelRuntime

MODELS = ["jv_bilstm_attn", "jv_bigru_attn", "jv_lstm_stream"]
STREAM_MODEL = "jv_lstm_stream"
COUNTER = "seqserve_side_by_side_calls_total"
ATOL = 1e-6
BIG = 64  # sequences in a big call (the default --max-batch-size)
GATE_S = 10.0  # longest a gated lane holds its part


def assert_answers_match(answers: PackedOutputs, expected: dict[str, np.ndarray]) -> None:
    """Every sequence's every output (as the batcher answers it) equals the reference batch's row."""
    rows = per_sequence(expected, answers.lengths)
    for i, row in enumerate(rows):
        got = answers.sequence(i)
        for name, value in row.items():
            np.testing.assert_allclose(got[name], value, atol=ATOL, rtol=0, err_msg=f"sequence {i} {name}")


# --- the cut ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("parts", [2, 3, 4])
def test_parts_hold_every_sequence_once_in_length_order(parts):
    lengths = np.random.default_rng(parts).integers(1, 30, size=BIG)  # (B,)
    cut = balanced_parts(lengths, parts)
    assert len(cut) == parts and all(len(part) for part in cut)
    np.testing.assert_array_equal(np.concatenate(cut), np.argsort(lengths, kind="stable"))


def test_parts_are_cut_so_that_they_end_together():
    """48 short and 16 long sequences: halves would pad 32 x 30 steps; cut after the short ones, the
    costlier part pads 16 x 30."""
    lengths = np.array([30] * 16 + [5] * 48)
    assert [len(part) for part in balanced_parts(lengths, 2)] == [48, 16]


def test_fewer_sequences_than_parts():
    assert [part.tolist() for part in balanced_parts(np.array([7]), 2)] == [[0]]


# --- the batcher on real sessions ------------------------------------------------------------------

def runtime_of(model: str, threads: int = 2, run_threads: int = 0) -> ModelRuntime:
    runtime = ModelRuntime(latest_version(REPOSITORY, model), threads, single_thread_below=16, run_threads=run_threads)
    runtime.warm_up()
    return runtime


def side_by_side_runs(metrics: Metrics, model: str) -> float:
    return metrics.registry.get_sample_value(COUNTER, {"model": model}) or 0.0


async def submit_all(runtime: ModelRuntime, calls: list[Packed], **policy) -> tuple[list[PackedOutputs], float]:
    """Queue `calls` together (one round where they fit one batch) after a small call (the model's time per
    step is known from then on); their answers, and how many calls ran side by side."""
    metrics = Metrics()
    with ThreadPoolExecutor(1) as executor, ThreadPoolExecutor(runtime.threads) as lanes:
        batcher = Batcher(runtime, executor, metrics.for_model(runtime.name),
                          BatchPolicy(**{"parallel_call_min": 32, **policy}), lanes)
        batcher.start()
        await batcher.submit(Packed.of(random_sequences(4), 12))
        batcher.hold()
        jobs = [batcher.enqueue(call) for call in calls]
        batcher.release()
        answers = [await job.future for job in jobs]
        await batcher.stop()
    return answers, side_by_side_runs(metrics, runtime.name)


def test_one_thread_runs_are_the_one_thread_session():
    """Runs of one thread each (the server's default, --concurrent-batches 0) run on the session the parts
    of a big call use: no second session, no small-batch switch."""
    runtime = runtime_of("jv_bilstm_attn", run_threads=1)
    assert runtime.one_thread is runtime and runtime.small is None
    assert runtime.session.get_session_options().intra_op_num_threads == 1
    two = runtime_of("jv_bilstm_attn", run_threads=2)
    assert two.session.get_session_options().intra_op_num_threads == 2
    assert two.one_thread.session.get_session_options().intra_op_num_threads == 1 and two.small[0] == 16


@pytest.mark.parametrize("run_threads", [1, 2])
@pytest.mark.parametrize("model", MODELS)
def test_a_big_call_runs_side_by_side_with_onnxruntimes_answers(model, run_threads):
    runtime = runtime_of(model, run_threads=run_threads)
    sequences = random_sequences(BIG, seed=1)
    h0 = c0 = None
    if model == STREAM_MODEL:  # initial states travel with their sequences into the parts
        rng = np.random.default_rng(2)
        h0, c0 = (rng.normal(size=(2, BIG, 64)).astype(np.float32) * 0.5 for _ in range(2))  # (L, B, H)
    [answers], runs = asyncio.run(submit_all(runtime, [Packed.of(sequences, 12, h0, c0)]))
    assert runs == 1
    assert_answers_match(answers, reference(model, sequences, h0, c0))


class GatedLanes(ThreadPoolExecutor):
    """Lanes whose work waits at a gate until the test opens it."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.gate = threading.Event()

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(lambda: self.gate.wait(GATE_S) and fn(*args, **kwargs))


def test_the_event_loop_goes_on_serving_while_a_big_call_runs():
    """The parts run in lanes and the event loop awaits them: with the parts held at a gate, the loop still
    answers a small call of another model, and the big call is answered once the gate opens."""
    big, small = runtime_of("jv_bilstm_attn"), runtime_of("jv_bigru_attn")

    async def scenario():
        metrics = Metrics()
        with ThreadPoolExecutor(1) as executor, GatedLanes(big.threads) as lanes:
            batchers = [Batcher(runtime, executor, metrics.for_model(runtime.name),
                                BatchPolicy(parallel_call_min=32), lanes) for runtime in (big, small)]
            for batcher in batchers:
                batcher.start()
            held = batchers[0].enqueue(Packed.of(random_sequences(BIG, seed=5), 12))
            answered = await asyncio.wait_for(batchers[1].submit(Packed.of(random_sequences(1), 12)), GATE_S / 2)
            still_held = not held.future.done()
            lanes.gate.set()
            answers = await held.future
            for batcher in batchers:
                await batcher.stop()
        return answered, still_held, answers, side_by_side_runs(metrics, big.name)

    answered, still_held, answers, runs = asyncio.run(scenario())
    assert len(answered) == 1 and still_held and runs == 1
    assert_answers_match(answers, reference("jv_bilstm_attn", random_sequences(BIG, seed=5)))


@pytest.mark.parametrize("case", ["under the minimum", "two calls in one round", "switched off", "one thread"])
def test_other_rounds_run_as_before_with_the_same_answers(case):
    model = "jv_bilstm_attn"
    sequences = random_sequences(BIG, seed=3)
    calls = [Packed.of(sequences, 12)]
    runtime, policy = runtime_of(model), {}
    if case == "under the minimum":
        sequences = sequences[:31]
        calls = [Packed.of(sequences, 12)]
    elif case == "two calls in one round":
        calls = [Packed.of(sequences[:32], 12), Packed.of(sequences[32:], 12)]
    elif case == "switched off":
        policy = {"parallel_call_min": 0}
    else:
        runtime = runtime_of(model, threads=1)
    answers, runs = asyncio.run(submit_all(runtime, calls, **policy))
    assert runs == 0
    expected = reference(model, sequences)
    firsts = np.cumsum([0] + [len(call) for call in calls])
    for answer, first in zip(answers, firsts[:-1], strict=True):
        rows = per_sequence(expected, np.array([len(s) for s in sequences]))[first:first + len(answer)]
        for i, row in enumerate(rows):
            for name, value in row.items():
                np.testing.assert_allclose(answer.sequence(i)[name], value, atol=ATOL, rtol=0, err_msg=name)


# --- end to end (v2 ModelInfer) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    if physical_cores() < 2:
        pytest.skip("side by side needs 2 intra-op threads, the server never takes more than the cores")
    with threaded_server(REPOSITORY, intra_op_threads=2) as s:
        yield s


def infer(server, model: str, x: np.ndarray, lengths: np.ndarray | None) -> tuple[tc.InferResult, float]:
    """One ModelInfer (every output); its result and how many calls ran side by side meanwhile."""
    registry = server.server.metrics.registry
    before = registry.get_sample_value(COUNTER, {"model": model}) or 0.0
    tensors = {"x": x} if lengths is None else {"x": x, "lengths": lengths}
    inputs = []
    for name, value in tensors.items():
        inputs.append(tc.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64"))
        inputs[-1].set_data_from_numpy(value)
    with tc.InferenceServerClient(server.target) as client:
        result = client.infer(model, inputs)
    return result, (registry.get_sample_value(COUNTER, {"model": model}) or 0.0) - before


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("padding", ["padded", "unpadded"])
def test_a_big_v2_call_answers_as_onnxruntime_on_the_clients_batch(server, model, padding):
    """Padded: mixed lengths padded by the client, with lengths; unpadded: every row full length, no lengths.
    Every output equals onnxruntime on the same x, zeros on padding included."""
    sequences = random_sequences(BIG, seed=4)
    if padding == "unpadded":
        sequences = [np.resize(s, (17, 12)) for s in sequences]
    x, lengths = padded(sequences)  # (B, T, F), (B,)
    result, runs = infer(server, model, x, lengths if padding == "padded" else None)
    assert runs == 1
    expected = reference(model, sequences)
    for name, value in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), value, atol=ATOL, rtol=0, err_msg=name)


def test_a_small_v2_call_takes_the_usual_path(server):
    sequences = random_sequences(8, seed=5)
    x, lengths = padded(sequences)
    result, runs = infer(server, "jv_bilstm_attn", x, lengths)
    assert runs == 0
    np.testing.assert_allclose(result.as_numpy("logits"), reference("jv_bilstm_attn", sequences)["logits"],
                               atol=ATOL, rtol=0)
