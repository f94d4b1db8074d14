"""Figures 3 and 4: the gRPC server against the ceiling it can reach on these cores.

    ceiling = 1 / (1/ort_best + 1/echo)

`ort_best`: in-process onnxruntime (the server's session options) on the JapaneseVowels test
sequences at its best batch size, batches taken in random order or sorted by length, whichever
is faster (padding included in the time). `echo`: the same load generator, same messages,
against `bench.echo_server` (the same gRPC service answering without a model). The real server
(`python -m server`), the echo server and the load generator are three processes; onnxruntime
in-process runs in the bench's own process while the servers sit idle.

Each repetition measures, in this order: the onnxruntime sweep and batch-1 latency, then one
load-generator process running every scenario against the echo and the server alternately. Each
ratio is taken inside a repetition; the figure is the median over repetitions.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPOSITORY, THREADS, Mode, at_least, at_most, feeds_for, figure, runtime_for
from bench.procs import echo_server, real_server, run_loadgen
from seqserve.inference import pad

CONCURRENCY = (1, 8, 64)
MODES = ("unary", "stream")
PER_CALL = 64  # sequences per call for the "big calls" figure
PER_CALL_CONCURRENCY = 2  # callers sending 64-sequence calls: one decodes while the other computes
SWEEP = (1, 4, 8, 16, 32, 64, 128)
GOAL_RATIO = 0.8
GOAL_OVERHEAD_MS = 0.3
WORKERS = 2  # the --workers figure: this many server processes against one
WORKER_CONNECTIONS = 8  # ... driven over this many connections (one connection reaches one worker)


def ort_sweep(runtime, sequences: list[np.ndarray], min_time: float) -> dict[str, dict[str, float]]:
    """Sequences/s of in-process onnxruntime per batch size, random and length-sorted batches."""
    rng = np.random.default_rng(0)
    orders = {"random": [sequences[i] for i in rng.permutation(len(sequences))],
              "sorted": sorted(sequences, key=len)}
    out: dict[str, dict[str, float]] = {k: {} for k in orders}
    for batch in SWEEP:
        for name, ordered in orders.items():
            batches = [ordered[i: i + batch] for i in range(0, len(ordered), batch)]
            x, lengths = pad(batches[0], runtime.arch.input_size)
            runtime.session.run(None, feeds_for(runtime, x, lengths))  # warm this shape
            done, i, t0 = 0, 0, time.perf_counter()
            while True:
                group = batches[i % len(batches)]
                x, lengths = pad(group, runtime.arch.input_size)
                runtime.session.run(None, feeds_for(runtime, x, lengths))
                done += len(group)
                i += 1
                if (elapsed := time.perf_counter() - t0) >= min_time:
                    break
            out[name][str(batch)] = done / elapsed  # str keys: the same after a JSON round trip
    return out


def ort_latency(runtime, sequences: list[np.ndarray], min_time: float) -> dict[str, float]:
    """Batch-1 latency of in-process onnxruntime over the test sequences (ms)."""
    times, i, t_end = [], 0, time.perf_counter() + min_time
    while time.perf_counter() < t_end or i < len(sequences):
        steps = sequences[i % len(sequences)]
        feeds = feeds_for(runtime, steps[None], np.array([len(steps)], dtype=np.int64))
        t0 = time.perf_counter()
        runtime.session.run(None, feeds)
        times.append(time.perf_counter() - t0)
        i += 1
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "samples": len(ms)}


def build_plan(model: str, payloads: Path, servers: dict[str, Any], mode: Mode, rep: int) -> dict[str, Any]:
    scenarios = []

    def add(target: str, kind: str, concurrency: int, per_call: int = 1, packed: bool = False,
            connections: int = 1) -> None:
        s = servers[target]
        form = ("/packed" if packed else "") + (f"/x{connections}" if connections > 1 else "")
        scenarios.append({"label": f"{target}/{kind}/c{concurrency}/k{per_call}{form}", "server": target,
                          "target": s.target, "pid": s.pid, "model": model, "mode": kind,
                          "concurrency": concurrency, "per_call": per_call, "packed": packed,
                          "connections": connections, "warmup_s": mode.warmup_s, "duration_s": mode.duration_s})

    pairs = [(kind, c, 1) for kind in MODES for c in CONCURRENCY] + [("unary", PER_CALL_CONCURRENCY, PER_CALL)]
    for n, (kind, c, k) in enumerate(pairs):
        order = ("echo", "server") if (n + rep) % 2 == 0 else ("server", "echo")
        for target in order:
            add(target, kind, c, k)
    add("server_nobatch", "unary", 64)
    add("server", "unary", PER_CALL_CONCURRENCY, PER_CALL, packed=True)
    for target in (("server", "server_workers") if rep % 2 == 0 else ("server_workers", "server")):
        add(target, "unary", 64, connections=WORKER_CONNECTIONS)  # 1 vs WORKERS processes, many connections
    return {"payloads": str(payloads), "scenarios": scenarios}


def pick(results: list[dict[str, Any]], server: str, mode: str, concurrency: int, per_call: int = 1,
         packed: bool = False, connections: int = 1) -> dict[str, Any]:
    """The (last) result of one scenario."""
    wanted = (server, mode, concurrency, per_call, packed, connections)
    found = [r for r in results if (r["server"], r["mode"], r["concurrency"], r["per_call"], r.get("packed", False),
                                    r.get("connections", 1)) == wanted]
    if not found:
        raise KeyError(f"no result for {server}/{mode}/c{concurrency}/k{per_call}{'/packed' if packed else ''}"
                       f"{f'/x{connections}' if connections > 1 else ''}")
    return found[-1]


def ceiling(ort_best: float, echo: float) -> float:
    return 1.0 / (1.0 / ort_best + 1.0 / echo)


def run(mode: Mode, model: str, work_dir: Path) -> tuple[dict[str, dict], dict[str, Any]]:
    from bench.common import test_sequences

    sequences, _, _ = test_sequences()
    payloads = work_dir / "payloads.npz"
    np.savez(payloads, steps=np.concatenate(sequences), lengths=np.array([len(s) for s in sequences]))
    runtime = runtime_for(model)
    servers: dict[str, Any] = {}
    reps = []
    try:
        servers["server"] = real_server(REPOSITORY, work_dir, "server")
        servers["server_nobatch"] = real_server(REPOSITORY, work_dir, "server_nobatch", "--no-batching")
        servers["echo"] = echo_server(REPOSITORY, work_dir)
        servers["server_workers"] = real_server(REPOSITORY, work_dir, "server_workers", "--workers", str(WORKERS))
        for s in servers.values():  # started together, waited for one by one
            s.wait_ready()
        for rep in range(mode.serving_reps):
            sweep = ort_sweep(runtime, sequences, 2 * mode.min_time)
            latency = ort_latency(runtime, sequences, 4 * mode.min_time)
            results = run_loadgen(build_plan(model, payloads, servers, mode, rep), work_dir, f"rep{rep}")
            reps.append({"ort_sweep": sweep, "ort_latency": latency, "loadgen": results})
    finally:
        for s in servers.values():
            s.stop()
    return figures_from(reps, model), {"model": model, "reps": reps}


def ort_best(rep: dict[str, Any]) -> tuple[float, str]:
    best = max(((sps, f"{order} batch {b}") for order, by_b in rep["ort_sweep"].items() for b, sps in by_b.items()))
    return best


def figures_from(reps: list[dict[str, Any]], model: str) -> dict[str, dict]:
    figures: dict[str, dict] = {}
    errors = sum(r["errors"] for rep in reps for r in rep["loadgen"])
    common = {"model": model, "threads": THREADS, "repetitions": len(reps), "loadgen_errors": errors}
    for kind in MODES:
        for c in CONCURRENCY:
            ratios, per_rep = [], []
            for rep in reps:
                best, where = ort_best(rep)
                echo = pick(rep["loadgen"], "echo", kind, c)
                served = pick(rep["loadgen"], "server", kind, c)
                ceil = ceiling(best, echo["seqs_per_s"])
                ratios.append(served["seqs_per_s"] / ceil)
                per_rep.append({"served_seqs_per_s": served["seqs_per_s"], "echo_seqs_per_s": echo["seqs_per_s"],
                                "ort_best_seqs_per_s": best, "ort_best_at": where, "ceiling_seqs_per_s": ceil,
                                "served_p50_ms": served["p50_ms"], "served_p99_ms": served["p99_ms"],
                                "echo_p50_ms": echo["p50_ms"], "echo_p99_ms": echo["p99_ms"],
                                "server_cpu_s": served["server_cpu_s"], "client_cpu_s": served["client_cpu_s"],
                                "echo_server_cpu_s": echo["server_cpu_s"], "echo_client_cpu_s": echo["client_cpu_s"],
                                "seconds": served["seconds"]})
            value = statistics.median(ratios)
            goal, met = at_least(value, GOAL_RATIO) if c == 64 else (None, None)
            figures[f"serving.{kind}.c{c}"] = figure(
                value, goal, met, "served seq/s / ceiling", concurrency=c, mode=kind, per_call=1,
                ratios=ratios, per_rep=per_rep, **common)

    ratios, per_rep = [], []
    for rep in reps:
        best, where = ort_best(rep)
        served = pick(rep["loadgen"], "server", "unary", PER_CALL_CONCURRENCY, PER_CALL)
        echo = pick(rep["loadgen"], "echo", "unary", PER_CALL_CONCURRENCY, PER_CALL)
        ratios.append(served["seqs_per_s"] / best)
        per_rep.append({"served_seqs_per_s": served["seqs_per_s"], "ort_best_seqs_per_s": best, "ort_best_at": where,
                        "echo_seqs_per_s": echo["seqs_per_s"],
                        "ceiling_seqs_per_s": ceiling(best, echo["seqs_per_s"]),
                        "served_p50_ms": served["p50_ms"], "server_cpu_s": served["server_cpu_s"]})
    value = statistics.median(ratios)
    figures["serving.per_call_64"] = figure(
        value, *at_least(value, GOAL_RATIO), "served seq/s / ort_best", per_call=PER_CALL,
        concurrency=PER_CALL_CONCURRENCY, mode="unary", ratios=ratios, per_rep=per_rep, **common)

    ratios, per_rep = [], []
    for rep in reps:
        on = pick(rep["loadgen"], "server", "unary", 64)["seqs_per_s"]
        off = pick(rep["loadgen"], "server_nobatch", "unary", 64)["seqs_per_s"]
        gain = rep["ort_sweep"]["random"]["64"] / rep["ort_sweep"]["random"]["1"]
        ratios.append(on / off)
        per_rep.append({"batching_on_seqs_per_s": on, "batching_off_seqs_per_s": off, "ort_b64_over_b1": gain})
    value = statistics.median(ratios)
    figures["serving.dynamic_batching"] = figure(
        value, None, None, "served seq/s batching on / off (unary, 64 clients); compare ort_b64_over_b1",
        ort_b64_over_b1=statistics.median(p["ort_b64_over_b1"] for p in per_rep),
        ratios=ratios, per_rep=per_rep, **common)

    figures.update(packed_and_workers_figures(reps, common))

    overheads, per_rep = [], []
    for rep in reps:
        served = pick(rep["loadgen"], "server", "unary", 1)
        echo = pick(rep["loadgen"], "echo", "unary", 1)
        ort_ms = rep["ort_latency"]["p50_ms"]
        overheads.append(served["p50_ms"] - (ort_ms + echo["p50_ms"]))
        per_rep.append({"served_p50_ms": served["p50_ms"], "served_p99_ms": served["p99_ms"],
                        "echo_p50_ms": echo["p50_ms"], "echo_p99_ms": echo["p99_ms"],
                        "ort_b1_p50_ms": ort_ms, "ort_b1_p99_ms": rep["ort_latency"]["p99_ms"]})
    value = statistics.median(overheads)
    figures["latency.single_client"] = figure(
        value, *at_most(value, GOAL_OVERHEAD_MS), "ms: served p50 - (onnxruntime batch-1 p50 + echo p50)",
        served_p50_ms=statistics.median(p["served_p50_ms"] for p in per_rep),
        served_p99_ms=statistics.median(p["served_p99_ms"] for p in per_rep),
        overheads=overheads, per_rep=per_rep, **common)
    return figures


def packed_and_workers_figures(reps: list[dict[str, Any]], common: dict[str, Any]) -> dict[str, dict]:
    """64-sequence calls in the packed form (against onnxruntime at its best batch, and against the
    per-sequence form), and 64 one-sequence clients on WORKERS processes against one."""
    figures = {}
    packed_ratios, gains, per_rep = [], [], []
    for rep in reps:
        best, where = ort_best(rep)
        packed = pick(rep["loadgen"], "server", "unary", PER_CALL_CONCURRENCY, PER_CALL, packed=True)
        plain = pick(rep["loadgen"], "server", "unary", PER_CALL_CONCURRENCY, PER_CALL)
        packed_ratios.append(packed["seqs_per_s"] / best)
        gains.append(packed["seqs_per_s"] / plain["seqs_per_s"])
        per_rep.append({"packed_seqs_per_s": packed["seqs_per_s"], "per_sequence_seqs_per_s": plain["seqs_per_s"],
                        "ort_best_seqs_per_s": best, "ort_best_at": where, "packed_p50_ms": packed["p50_ms"]})
    value = statistics.median(packed_ratios)
    figures["serving.per_call_64_packed"] = figure(
        value, *at_least(value, GOAL_RATIO), "served seq/s (packed) / ort_best", per_call=PER_CALL,
        concurrency=PER_CALL_CONCURRENCY, ratios=packed_ratios, per_rep=per_rep, **common)
    figures["serving.packed_over_per_sequence"] = figure(
        statistics.median(gains), None, None, "packed / per-sequence form, 64-sequence calls", ratios=gains,
        **common)
    ratios, per_rep = [], []
    for rep in reps:
        one = pick(rep["loadgen"], "server", "unary", 64, connections=WORKER_CONNECTIONS)["seqs_per_s"]
        many = pick(rep["loadgen"], "server_workers", "unary", 64, connections=WORKER_CONNECTIONS)["seqs_per_s"]
        ratios.append(many / one)
        per_rep.append({"one_process_seqs_per_s": one, f"{WORKERS}_workers_seqs_per_s": many})
    figures["serving.workers"] = figure(
        statistics.median(ratios), None, None,
        f"served seq/s with --workers {WORKERS} / one process (unary, 64 clients, {WORKER_CONNECTIONS} connections)",
        workers=WORKERS, connections=WORKER_CONNECTIONS, ratios=ratios, per_rep=per_rep, **common)
    return figures
