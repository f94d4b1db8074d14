"""`python -m bench.soak`: the hardening figures, measured on a real server process.

Not part of the test run (it takes minutes). Against one `python -m server` on loopback it prints:

1. malformed requests (undecodable bytes and well-formed nonsense, on every RPC) sent while good
   clients run, the status codes seen, and the good answers that were wrong or failed;
2. server RSS before and after an EncodeStream client sends 1000 requests and reads no answer;
3. server CPU per chunk of a bidirectional StreamSequence at 1k and at 10k empty chunks;
4. server RSS over a soak of 64 concurrent StreamSequence clients;
5. server peak RSS when a request whose answer could not be sent (40 x 4096 steps, per-step
   outputs of a bidirectional model) is refused, against the request's own size.

Goals (the hardening issue): 0 UNKNOWN/INTERNAL, 0 good requests failed, slow-reader growth <= 64 MiB,
per-chunk cost flat (<= 1.5x), soak growth < 5 %, over-size refusal growth <= 2x the request.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from bench.common import REPOSITORY, runtime_for, test_sequences
from bench.loadgen import cpu_seconds
from bench.procs import real_server
from seqserve.client import SeqserveClient, encode_request
from seqserve.inference import Batch
from seqserve.tensors import to_tensor
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

SERVICE = "/seqserve.v1.SeqserveService/"
UNARY = ("ListModels", "GetModel", "Encode")
STREAMING = ("EncodeStream", "StreamSequence")
BI_MODEL, STREAM_MODEL = "jv_bilstm_attn", "jv_lstm_stream"
ANSWER_ATOL = 1e-5  # a good answer may come from another batch composition than the reference's


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


# --- 1. malformed requests beside good clients ---------------------------------------------------


def malformed_payloads(rng: random.Random) -> list[bytes]:
    """Bytes no decoder accepts, and valid messages with nonsense values, as raw request bytes."""
    good = encode_request(BI_MODEL, [np.ones((5, 12), np.float32)]).SerializeToString()
    nonsense = [
        pb.EncodeRequest(model="x" * 20_000),
        pb.EncodeRequest(model=BI_MODEL, version=-3, sequences=[pb.Sequence(steps=pb.Tensor(shape=[-1, 12]))]),
        pb.EncodeRequest(model=BI_MODEL, sequences=[pb.Sequence(steps=pb.Tensor(shape=[2**40, 2**40], data=b"\0"))]),
        pb.EncodeRequest(model=BI_MODEL, outputs=[99], sequences=[pb.Sequence(steps=to_tensor(np.ones((3, 12))))]),
        pb.StreamSequenceRequest(model=STREAM_MODEL, steps=to_tensor(np.ones((2, 12), np.float32)),
                                 initial_state=pb.State(model=STREAM_MODEL, steps_seen=2**63 - 1)),
        pb.StreamSequenceRequest(model=STREAM_MODEL, initial_state=pb.State(steps_seen=-5)),
    ]
    return [
        good[: rng.randrange(1, len(good))],  # truncated
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint that never ends
        b"\x0a\x04\xff\xfe\xfd\xfc",  # invalid UTF-8 in a string field
        rng.randbytes(rng.randrange(1, 300)),
        *(m.SerializeToString() for m in nonsense),
    ]


def send_raw(channel: grpc.Channel, method: str, payload: bytes) -> str:
    """Send raw bytes to one RPC; the status code name it ends with."""
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    try:
        if method in UNARY:
            channel.unary_unary(SERVICE + method, **identity)(payload, timeout=10)
        else:
            list(channel.stream_stream(SERVICE + method, **identity)(iter([payload, payload]), timeout=10))
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def good_client(target: str, sequences: list[np.ndarray], reference: np.ndarray, stop: threading.Event,
                tally: collections.Counter) -> None:
    with SeqserveClient(target, timeout=30) as client:
        i = 0
        while not stop.is_set():
            k = i % len(sequences)
            try:
                [result] = client.encode(BI_MODEL, [sequences[k]], outputs=["logits"])
                tally["good ok" if np.allclose(result.logits, reference[k], atol=ANSWER_ATOL) else "good WRONG"] += 1
            except grpc.RpcError as exc:
                tally[f"good failed {exc.code().name}"] += 1
            i += 1


def malformed_under_load(target: str, count: int) -> dict:
    sequences = test_sequences()[0][:32]
    runtime = runtime_for(BI_MODEL)
    reference = np.stack([logits_alone(runtime, s) for s in sequences])  # (N, C), each sequence run alone
    rng = random.Random(0)
    codes: collections.Counter = collections.Counter()
    tally: collections.Counter = collections.Counter()
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=4) as pool:
        goods = [pool.submit(good_client, target, sequences, reference, stop, tally) for _ in range(4)]
        with grpc.insecure_channel(target) as channel:
            sent = 0
            while sent < count:
                for payload in malformed_payloads(rng):
                    method = (*UNARY, *STREAMING)[sent % 5]
                    codes[send_raw(channel, method, payload)] += 1
                    sent += 1
        stop.set()
        for g in goods:
            g.result()
    return {"malformed_sent": sum(codes.values()), "codes": dict(codes), "good": dict(tally),
            "unknown_or_internal": codes["UNKNOWN"] + codes["INTERNAL"],
            "good_failed": sum(v for k, v in tally.items() if k != "good ok")}


def logits_alone(runtime, steps: np.ndarray) -> np.ndarray:
    """One (T, F) sequence's logits (C,), run alone as a batch of one (the server's runtime, no batcher)."""
    batch = Batch(steps[None], np.array([len(steps)], dtype=np.int64))  # (1, T, F)
    return runtime.run(batch, ["logits"])["logits"][0]


# --- 2. a client that never reads its answers -------------------------------------------------------


def slow_reader(target: str, pid: int, unread: int) -> dict:
    request = encode_request(BI_MODEL, [np.ones((200, 12), np.float32)], outputs=["outputs"])  # ~100 kB answers
    with grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stub = pb_grpc.SeqserveServiceStub(channel)
        warm = [pb.EncodeStreamRequest(request_id=str(i), request=request) for i in range(256)]
        assert len(list(stub.EncodeStream(iter(warm), timeout=300))) == len(warm)  # onnxruntime's arena at size
        before = memory_mib(pid)
        call = stub.EncodeStream(iter(pb.EncodeStreamRequest(request_id=str(i), request=request)
                                      for i in range(unread)), timeout=300)
        time.sleep(5.0)  # the server reads what it will; a server without back-pressure reads all
        held = memory_mib(pid)
        call.cancel()
    return {"unread_answers": unread, "rss_before_mib": round(before, 1), "rss_unread_mib": round(held, 1),
            "growth_mib": round(held - before, 1)}


# --- 3. empty chunks ----------------------------------------------------------------------------


def empty_chunks(target: str, pid: int, counts: tuple[int, ...] = (1000, 10_000)) -> dict:
    empty = to_tensor(np.zeros((0, 12), np.float32))
    per_chunk = {}
    with SeqserveClient(target, timeout=300) as client:
        for n in counts:
            chunks = [pb.StreamSequenceRequest(model=BI_MODEL, steps=empty)]
            chunks += [pb.StreamSequenceRequest(steps=empty) for _ in range(n - 2)]
            chunks.append(pb.StreamSequenceRequest(steps=to_tensor(np.ones((5, 12), np.float32)), end=True))
            started = cpu_seconds(pid)
            answers = list(client.stub.StreamSequence(iter(chunks), timeout=300))
            assert len(answers) == 1 and answers[0].final
            per_chunk[n] = (cpu_seconds(pid) - started) / n
    small, large = counts
    return {f"cpu_us_per_chunk_at_{n}": round(v * 1e6, 1) for n, v in per_chunk.items()} | {
        "ratio": round(per_chunk[large] / per_chunk[small], 2)}


# --- 4. 64 streams for a while ---------------------------------------------------------------------


def stream_soak(target: str, pid: int, streams: int, seconds: float) -> dict:
    sequences = test_sequences()[0]
    stop = threading.Event()
    tally: collections.Counter = collections.Counter()
    samples: list[tuple[float, float]] = []

    def streamer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with SeqserveClient(target, timeout=60) as client:
            while not stop.is_set():
                steps = sequences[rng.integers(len(sequences))]
                chunks = np.array_split(steps, int(rng.integers(1, 5)))
                try:
                    updates = list(client.stream_sequence(STREAM_MODEL, chunks))
                    tally["ok" if updates and updates[-1].final else "incomplete"] += 1
                except grpc.RpcError as exc:
                    tally[exc.code().name] += 1

    with ThreadPoolExecutor(max_workers=streams) as pool:
        workers = [pool.submit(streamer, i) for i in range(streams)]
        started = time.monotonic()
        time.sleep(min(10.0, seconds / 4))  # warm: allocator pools, gRPC buffers
        while time.monotonic() - started < seconds:
            samples.append((round(time.monotonic() - started, 1), round(memory_mib(pid), 1)))
            time.sleep(max(1.0, seconds / 30))
        stop.set()
        for w in workers:
            w.result()
    first, last = samples[0][1], samples[-1][1]
    return {"streams": streams, "seconds": seconds, "calls": dict(tally), "rss_first_mib": first,
            "rss_last_mib": last, "growth_pct": round(100 * (last - first) / first, 2), "rss_samples": samples}


# --- 5. an answer too large to send ---------------------------------------------------------------


def oversize(target: str, pid: int) -> dict:
    request = encode_request(BI_MODEL, [np.ones((4096, 12), np.float32)] * 40, outputs=["outputs"])
    size_mib = request.ByteSize() / 2**20
    before, peak_before = memory_mib(pid), memory_mib(pid, "VmHWM")
    code = "OK"
    with SeqserveClient(target, timeout=120) as client:
        try:
            client.stub.Encode(request, timeout=120)
        except grpc.RpcError as exc:
            code = exc.code().name
            detail = exc.details()
    growth = memory_mib(pid) - before
    return {"request_mib": round(size_mib, 1), "code": code, "message": detail if code != "OK" else "",
            "rss_growth_mib": round(growth, 1), "growth_over_request": round(growth / size_mib, 2),
            "peak_rss_growth_mib": round(memory_mib(pid, "VmHWM") - peak_before, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--malformed", type=int, default=20_000, help="malformed requests to send")
    p.add_argument("--unread", type=int, default=1000, help="answers the slow reader leaves unread")
    p.add_argument("--streams", type=int, default=64, help="concurrent streams in the soak")
    p.add_argument("--soak-seconds", type=float, default=120.0, help="length of the soak (the issue: 600)")
    p.add_argument("--out", type=Path, default=Path("bench/soak.json"), help="where to write the figures")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as logs:
        server = real_server(REPOSITORY, Path(logs), "server", "--max-concurrent-streams", "512").wait_ready()
        try:
            steps = [("oversize", lambda: oversize(server.target, server.pid)),
                     ("malformed", lambda: malformed_under_load(server.target, args.malformed)),
                     ("slow_reader", lambda: slow_reader(server.target, server.pid, args.unread)),
                     ("empty_chunks", lambda: empty_chunks(server.target, server.pid)),
                     ("soak", lambda: stream_soak(server.target, server.pid, args.streams, args.soak_seconds))]
            for name, step in steps:
                started = time.monotonic()
                results[name] = step()
                shown = {k: v for k, v in results[name].items() if k != "rss_samples"}
                print(f"{name} ({time.monotonic() - started:.0f} s): {json.dumps(shown)}", flush=True)
        finally:
            server.stop()
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
