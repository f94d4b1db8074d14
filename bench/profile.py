"""Profile the real server under load: where its CPU goes, per thread and per Python function.

    python -m bench.profile [--mode unary|stream] [--concurrency 64] [--seconds 8] [--out-dir bench/]
                            [-- extra server flags, e.g. --intra-op-threads 1]

Starts `python -m server` and the load generator (separate processes, as in the benchmark),
and while the load runs: reads every server thread's CPU time from /proc/PID/task (native
threads included: onnxruntime's pool, gRPC's event engine) and samples the Python stacks with
py-spy (`pip install py-spy`; `--native` so C frames show), and reads the server's own
Prometheus metrics (mean batch size, onnxruntime time per batch, queue wait). Writes PROFILE.md
(tables with percentages) and profile.raw.txt (py-spy's collapsed stacks, for flamegraph.pl).

The server runs as shipped: onnxruntime's intra-op spinning is off by default (`--ort-spinning` turns it
on, passed after `--` like any other server flag).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.common import REPOSITORY, ROOT, test_sequences
from bench.procs import free_port, real_server

TICKS = os.sysconf("SC_CLK_TCK")
# Python-level buckets for the event loop thread: first matching frame wins (innermost first).
BUCKETS = [
    ("decode + validate request (codec.decode_steps)", "decode_steps"),
    ("encode response (codec.encode_result)", "encode_result"),
    ("Prometheus metrics", "prometheus_client"),
    ("batcher: collect/queue (batching.py)", "Batcher._collect"),
    ("batcher: hop to inference thread (run_in_executor)", "run_in_executor"),
    ("batcher loop, other", "Batcher._loop"),
    ("Batcher.submit / futures / gather", "Batcher.submit"),
    ("DataPlane.encode, other", "DataPlane.encode"),
    ("servicer wrapper (service.py)", "SeqserveService"),
    ("gRPC aio (cygrpc) receive/send", "cygrpc"),
    ("asyncio loop machinery", "asyncio/"),
]


def scrape(port: int, model: str) -> dict[str, float]:
    """Sums and counts of the server's batch size, inference time and queue wait for `model`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for metric in ("seqserve_batch_size", "seqserve_inference_seconds", "seqserve_queue_seconds"):
        for part in ("sum", "count"):
            m = re.search(rf'^{metric}_{part}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
            out[f"{metric}_{part}"] = float(m.group(1)) if m else 0.0
    return out


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)
        except (OSError, ValueError, IndexError):
            continue
    return out


def python_threads(py_spy: str, pid: int) -> dict[int, str]:
    """tid -> Python thread name, from `py-spy dump`."""
    done = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', done.stdout)}


def parse_raw(path: Path) -> list[tuple[str, list[str], int]]:
    rows = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        rows.append((frames[0], frames[1:], int(count)))
    return rows


def bucket(frames: list[str]) -> str:
    leaf = frames[-1] if frames else ""
    idle_leaf = re.search(r"epoll_wait|select_epoll|EpollSelector.select", leaf)
    if idle_leaf or any("EpollSelector.select" in f for f in frames[-4:]):
        return "idle (waiting in epoll)"
    for label, needle in BUCKETS:
        if any(needle in f for f in frames):
            return label
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary", help="load generator call type")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers")
    parser.add_argument("--per-call", type=int, default=1, help="sequences per call")
    parser.add_argument("--packed", action="store_true", help="send the calls in Encode's packed form")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to sample")
    parser.add_argument("--model", default="jv_bilstm_attn", help="model to call")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench", help="where PROFILE.md goes")
    parser.add_argument("--no-stacks", action="store_true",
                        help="skip py-spy (it stops the server ~200 times/s): thread CPU and metrics only")
    parser.add_argument("server_flags", nargs="*", help="extra `python -m server` flags (after --)")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        sequences, _, _ = test_sequences()
        payloads = work / "payloads.npz"
        np.savez(payloads, steps=np.concatenate(sequences), lengths=np.array([len(s) for s in sequences]))
        # py-spy's stops keep libuv's io_uring submission thread (uvloop) spinning: 0.29 cores of a sampled
        # server at 64 clients, none unsampled. Off, the thread table shows the server's own CPU.
        env = {"UV_USE_IO_URING": "0"}
        metrics_port = free_port()
        server = real_server(REPOSITORY, work, "server", *args.server_flags, "--metrics-port", str(metrics_port),
                             env=env).wait_ready()
        try:
            warmup = 1.5
            plan = {"payloads": str(payloads), "scenarios": [{
                "label": "profile", "server": "server", "target": server.target, "pid": server.pid,
                "model": args.model, "mode": args.mode, "concurrency": args.concurrency, "per_call": args.per_call,
                "packed": args.packed, "warmup_s": warmup, "duration_s": args.seconds + 1.0}]}
            (work / "plan.json").write_text(json.dumps(plan))
            loadgen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", "--plan", str(work / "plan.json"),
                                        "--out", str(work / "load.json")], cwd=ROOT,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)})
            time.sleep(warmup + 0.5)
            names = python_threads(py_spy, server.pid)
            before, t0, m0 = thread_cpu(server.pid), time.perf_counter(), scrape(metrics_port, args.model)
            raw = work / "raw.txt"
            if args.no_stacks:
                time.sleep(args.seconds)
                raw.write_text("")
            else:
                subprocess.run([py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "200",
                            "--duration", str(int(args.seconds)), "--threads", "--native", "--idle",
                                "-o", str(raw)], capture_output=True, timeout=args.seconds + 60, check=True)
            after, elapsed, m1 = thread_cpu(server.pid), time.perf_counter() - t0, scrape(metrics_port, args.model)
            loadgen.wait(120)
            load = json.loads((work / "load.json").read_text())[0]
            args.out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, args.out_dir / "profile.raw.txt")
        finally:
            server.stop()
    rows = parse_raw(args.out_dir / "profile.raw.txt")
    report = render(args, names, before, after, elapsed, rows, load, {k: m1[k] - m0[k] for k in m1})
    (args.out_dir / "PROFILE.md").write_text(report)
    print(f"profile: {args.out_dir / 'PROFILE.md'}")
    return 0


def render(args, names, before, after, elapsed, rows, load, metrics) -> str:
    cpu = {tid: (after[tid][0], after[tid][1] - before.get(tid, (None, 0.0))[1]) for tid in after}
    total = sum(c for _, c in cpu.values()) or 1e-9
    lines = [
        "# Server profile under load",
        "",
        f"`python -m bench.profile --mode {args.mode} --concurrency {args.concurrency} --per-call {args.per_call}"
        f"{' --packed' if args.packed else ''}`"
        f"{' -- ' + ' '.join(args.server_flags) if args.server_flags else ''}: model `{args.model}`, "
        f"{load['calls_per_s']:.0f} calls/s ({load['seqs_per_s']:.0f} seq/s) while sampled"
        f"{'' if args.no_stacks else ' (py-spy stops the server ~200 times/s: it slows it)'}, "
        f"p50 {load['p50_ms']:.1f} ms; load average {os.getloadavg()[0]:.1f}.",
        "",
        f"Server CPU {total / elapsed:.2f} cores over {elapsed:.1f} s = "
        f"{1e3 * total / max(1, load['calls_per_s'] * elapsed):.2f} ms CPU per call.",
        "",
        "Server metrics over the same window: "
        f"{metrics['seqserve_batch_size_count']:.0f} onnxruntime runs, mean batch "
        f"{metrics['seqserve_batch_size_sum'] / max(1, metrics['seqserve_batch_size_count']):.1f} sequences, "
        f"mean onnxruntime time per run "
        f"{1e3 * metrics['seqserve_inference_seconds_sum'] / max(1, metrics['seqserve_inference_seconds_count']):.2f}"
        " ms "
        f"(busy {100 * metrics['seqserve_inference_seconds_sum'] / elapsed:.0f}% of the window), mean queue wait "
        f"{1e3 * metrics['seqserve_queue_seconds_sum'] / max(1, metrics['seqserve_queue_seconds_count']):.2f} ms.",
        "",
        "## CPU by thread (/proc/PID/task)",
        "",
        "| thread | tid | cores | share of server CPU |",
        "|---|---|---|---|",
    ]
    for tid, (comm, seconds) in sorted(cpu.items(), key=lambda kv: -kv[1][1]):
        if seconds / total < 0.01:
            continue
        name = names.get(tid) or (f"native `{comm}`" + (" (onnxruntime intra-op pool)" if comm == "python" else ""))
        lines.append(f"| {name} | {tid} | {seconds / elapsed:.2f} | {100 * seconds / total:.0f}% |")
    lines += ["", "Native threads named `python` are onnxruntime's intra-op pool threads (one per session, "
              "intra-op threads - 1) and OpenBLAS's; Python threads are named by py-spy.", ""]
    by_thread: dict[str, list] = collections.defaultdict(list)
    for thread, frames, count in rows:
        by_thread[thread].append((frames, count))
    for thread, samples in sorted(by_thread.items()):
        n = sum(c for _, c in samples)
        buckets = collections.Counter()
        for frames, count in samples:
            buckets[bucket(frames)] += count
        if not n or buckets.get("idle (waiting in epoll)", 0) / n > 0.98:
            continue
        lines += [f"## {thread}: {n} samples", "", "| where | share of samples |", "|---|---|"]
        lines += [f"| {label} | {100 * c / n:.1f}% |" for label, c in buckets.most_common()]
        inclusive = collections.Counter()
        for frames, count in samples:
            for f in {re.sub(r":\d+\)$", ")", f) for f in frames if not f.startswith("0x")}:
                if "/" in f and ("server/" in f or "seqserve/" in f or "prometheus" in f or "numpy" in f):
                    inclusive[f] += count
        if inclusive:
            lines += ["", "Inclusive share of the project's and libraries' functions:", "",
                      "| function | share |", "|---|---|"]
            lines += [f"| `{f}` | {100 * c / n:.1f}% |" for f, c in inclusive.most_common(20)]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
