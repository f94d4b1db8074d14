"""The load generator: a client process that drives a seqserve (real or echo) with N concurrent callers.

    python -m bench.loadgen --plan plan.json --out results.json

The plan names the payloads (an .npz of `steps` (sum T_i, F) and `lengths` (N,)) and a list of
scenarios, run one after the other:

    {"label", "target": "host:port", "model", "mode": "unary" | "stream",
     "concurrency": N, "per_call": K, "packed": bool (optional: the packed form of Encode),
     "outputs": [names] (optional: what each answer carries, as seqserve.client names them),
     "connections": C (optional, default 1: the callers take turns over C channels, each its own TCP
     connection, as C client processes would; a server's --workers spread connections, not calls),
     "warmup_s", "duration_s", "pid": server pid (optional)}

`unary`: each of N callers loops on `Encode` (K sequences per call), one call in flight each.
`stream`: each of N callers opens one `EncodeStream` and loops write -> read on it.
Requests are built before the clock starts, cycling through the payloads, so the echo and the
real server get the same messages from the same code. Only calls that start and end inside the
measuring window count toward latency; every completion inside it counts toward throughput.
For each scenario: calls/s, sequences/s, latency p50/p90/p99 (ms), errors, and the CPU seconds
the client and (given its pid) the server spent in the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from seqserve.channel import MAX_MESSAGE_BYTES
from seqserve.client import encode_request
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
TICKS = os.sysconf("SC_CLK_TCK")


def load_payloads(path: Path) -> list[np.ndarray]:
    data = np.load(path)
    offsets = np.concatenate([[0], np.cumsum(data["lengths"])])
    return [data["steps"][offsets[i]: offsets[i + 1]] for i in range(len(data["lengths"]))]


def answered(response: pb.EncodeResponse) -> int:
    """Sequences an EncodeResponse answers, in either form."""
    return len(response.packed.ids) if response.HasField("packed") else len(response.results)


def build_requests(model: str, sequences: list[np.ndarray], per_call: int, packed: bool = False,
                   outputs: list[str] | None = None) -> list[pb.EncodeRequest]:
    """`outputs`: what the answers carry (seqserve.client's names); None: the server's default."""
    n = len(sequences)
    return [
        encode_request(model, [sequences[(i * per_call + j) % n] for j in range(per_call)],
                       ids=[str((i * per_call + j) % n) for j in range(per_call)], outputs=outputs, packed=packed)
        for i in range(n)
    ]


def own_cpu_seconds() -> float:
    """CPU time (user + system) of this process so far."""
    times = os.times()
    return times.user + times.system


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) of a process so far, from /proc; None if unreadable."""
    if pid is None:
        return own_cpu_seconds()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return None


class Window:
    """The measuring window, and what completed in it."""

    def __init__(self, warmup_s: float, duration_s: float) -> None:
        self.start = time.perf_counter() + warmup_s
        self.end = self.start + duration_s
        self.latencies: list[float] = []
        self.calls = 0
        self.errors = 0
        self.first_error = ""

    def record(self, t0: float, t1: float) -> None:
        if self.start <= t1 <= self.end:
            self.calls += 1
            if t0 >= self.start:
                self.latencies.append(t1 - t0)

    def error(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message


async def unary_caller(stub, requests, first: int, step: int, per_call: int, window: Window) -> None:
    i = first
    while (t0 := time.perf_counter()) < window.end:
        request = requests[i % len(requests)]
        i += step
        try:
            response = await stub.Encode(request)
        except grpc.aio.AioRpcError as exc:
            window.error(f"{exc.code().name}: {exc.details()}")
            continue
        if answered(response) != per_call:
            window.error(f"{answered(response)} results for {per_call} sequences")
        window.record(t0, time.perf_counter())


async def stream_caller(stub, requests, first: int, step: int, per_call: int, window: Window) -> None:
    call = stub.EncodeStream()
    tagged = [pb.EncodeStreamRequest(request_id=str(i), request=request) for i, request in enumerate(requests)]
    i = first
    try:
        while (t0 := time.perf_counter()) < window.end:
            request = tagged[i % len(tagged)]
            i += step
            await call.write(request)
            answer = await call.read()
            if answer is grpc.aio.EOF:
                window.error("stream ended early")
                return
            if answer.HasField("error"):
                window.error(f"{answer.error.code}: {answer.error.message}")
            elif answered(answer.response) != per_call:
                window.error(f"{answered(answer.response)} results for {per_call} sequences")
            window.record(t0, time.perf_counter())
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        window.error(f"{exc.code().name}: {exc.details()}")


def open_channels(target: str, connections: int) -> list[grpc.aio.Channel]:
    """`connections` channels to `target`, each on a TCP connection of its own (gRPC would otherwise share
    one connection between channels of equal settings)."""
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]


async def run_scenario(scenario: dict[str, Any], sequences: list[np.ndarray]) -> dict[str, Any]:
    per_call, concurrency = int(scenario.get("per_call", 1)), int(scenario["concurrency"])
    requests = build_requests(scenario["model"], sequences, per_call, bool(scenario.get("packed")),
                              scenario.get("outputs"))
    caller = {"unary": unary_caller, "stream": stream_caller}[scenario["mode"]]
    connections = int(scenario.get("connections", 1))
    channels = open_channels(scenario["target"], connections)
    try:
        await asyncio.wait_for(asyncio.gather(*(channel.channel_ready() for channel in channels)), 30)
        stubs = [pb_grpc.SeqserveServiceStub(channel) for channel in channels]
        return await measure(scenario, lambda window: [
            caller(stubs[w % connections], requests, w, concurrency, per_call, window) for w in range(concurrency)])
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


async def measure(scenario: dict[str, Any],
                  callers: Callable[[Window], list[Coroutine[Any, Any, None]]]) -> dict[str, Any]:
    """Run the scenario's callers on a fresh window; its calls/s, sequences/s, latencies, errors and CPU."""
    per_call, pid = int(scenario.get("per_call", 1)), scenario.get("pid")
    window = Window(float(scenario["warmup_s"]), float(scenario["duration_s"]))
    tasks = [asyncio.create_task(caller) for caller in callers(window)]
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    client0, server0 = own_cpu_seconds(), cpu_seconds(pid) if pid else None
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    client1, server1 = own_cpu_seconds(), cpu_seconds(pid) if pid else None
    await asyncio.gather(*tasks)
    seconds = window.end - window.start
    lat_ms = np.asarray(window.latencies) * 1e3
    pct = (lambda q: float(np.percentile(lat_ms, q))) if len(lat_ms) else (lambda q: float("nan"))
    return {
        **scenario,
        "calls": window.calls, "seconds": seconds,
        "calls_per_s": window.calls / seconds, "seqs_per_s": window.calls * per_call / seconds,
        "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "latency_samples": len(lat_ms),
        "errors": window.errors, "first_error": window.first_error,
        "client_cpu_s": client1 - client0,
        "server_cpu_s": (server1 - server0) if server0 is not None and server1 is not None else None,
    }


ScenarioRunner = Callable[[dict[str, Any], list[np.ndarray]], Awaitable[dict[str, Any]]]


async def run_plan(plan: dict[str, Any], run: ScenarioRunner = run_scenario) -> list[dict[str, Any]]:
    sequences = load_payloads(Path(plan["payloads"]))
    return [await run(s, sequences) for s in plan["scenarios"]]


def main(argv: list[str] | None = None, run: ScenarioRunner = run_scenario, prog: str = "python -m bench.loadgen",
         description: str = __doc__.split("\n\n")[0]) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--plan", type=Path, required=True, help="JSON plan: payloads and scenarios")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    args = parser.parse_args(argv)
    results = asyncio.run(run_plan(json.loads(args.plan.read_text()), run))
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
