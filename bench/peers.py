"""seqserve beside the Python servers users would otherwise pick: KServe `ModelServer` and MLServer.

    python -m bench.peers --setup          # once: bench/.peers/{kserve,mlserver}-venv (pip, needs PyPI)
    python -m bench.peers [--rounds 3] [--duration 3] [--probe-only] [--results bench/RESULTS.md]

Every server serves the same model.onnx (jv_bilstm_attn) through onnxruntime 1.32 with the same
session options (`seqserve.inference.open_session`) and the same thread budget: 2 onnxruntime
intra-op threads, one server process (seqserve: `--intra-op-threads 2`: two batches at once, one thread
each, a big call's two parts side by side; KServe: its synchronous `predict` on the event loop;
MLServer: `parallel_workers` 0, inference in the server process — measured here faster than 1 worker
process, 1513 vs 977 seq/s at 64 clients —, adaptive batching up to 64 sequences or 1 ms). The peers
run from their own venvs (bench/peer_runtimes/), never from the serving image.

The measurement re-runs itself inside a network namespace that holds only loopback (`unshare -n`,
`ip link set lo up`; KServe binds every interface with no option to change it), one server at a time,
the server order reversed every round; each scenario has a warm-up before its timed window. One load
generator for every server's v2 `ModelInfer` (bench.oip_loadgen, tritonclient.grpc.aio), asking for
logits and probabilities: one sequence per call at 1, 8 and 64 clients, and 64-sequence calls (x
[64, T_max, 12] + lengths) from 2 clients. MLServer's batcher joins requests of one shape only, so its
requests are padded to the data's longest sequence (29 steps) with lengths. seqserve also through its
own API (bench.loadgen): `Encode` and `EncodeStream` at the same concurrencies, packed 64-sequence calls,
with the same answer (OUTPUT_LOGITS: label, probabilities and logits).

Beside the speed, a correctness probe per server: 20 rounds of 8 concurrent one-sequence requests of
mixed lengths, half padded by the client to 29 steps with lengths, half unpadded without; each answer's
logits against in-process onnxruntime on the unpadded sequence (max abs difference <= 1e-4); wrong
answers and failed calls counted.

Figures (ratios from one run, median over rounds of the paired per-round ratio) and goals:
seqserve / KServe seq/s at 64 clients >= 1.5 (unary ModelInfer), >= 3 (EncodeStream), 64-sequence calls
>= 1.2; 1-client p50 latency seqserve / KServe <= 1. The same ratios over MLServer are reported without
goals. Writes bench/peers.json, bench/peers_throughput.png and the peer section of RESULTS.md (between
its markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPOSITORY, ROOT, machine_info, write_json, write_section
from bench.procs import Served, free_port, real_server, run_loadgen

PEERS_DIR = ROOT / "bench" / ".peers"
RUNTIMES = ROOT / "bench" / "peer_runtimes"
PINS = {  # onnxruntime: seqserve's own pin (pyproject's serve extra)
    "kserve": ["kserve==0.21.0", "onnxruntime==1.32.0", "numpy>=2.0,<3", "uvloop<0.22"],
    "mlserver": ["mlserver==1.7.1", "onnxruntime==1.32.0", "numpy>=2.0,<3", "uvloop<0.22"],  # MLServer#2286
}
SERVERS = ("seqserve", "kserve", "mlserver")
THREADS = 2  # onnxruntime intra-op threads, every server
CONCURRENCY = (1, 8, 64)
BIG_CALL, BIG_CLIENTS = 64, 2  # 64-sequence calls from 2 clients
ANSWER = ["logits", "probabilities"]  # what every answer carries, over either API
# seqserve.v1's OUTPUT_LOGITS: label, probabilities and logits (the default adds states, attention)
V1_ANSWER = ["logits"]
PROBE_ROUNDS, PROBE_REQUESTS, PROBE_ATOL = 20, 8, 1e-4
PROBE_TRAFFIC = {"mixed": "half padded by the client, half not", "padded": "every request padded, with lengths"}
NETNS_ENV = "BENCH_PEERS_NETNS"
OTHERS_MAX = 0.2  # cores' worth of CPU other processes may use while a server is measured (a shared machine)
TICKS = os.sysconf("SC_CLK_TCK")
SECTION_START = "<!-- bench.peers: start -->"
SECTION_END = "<!-- bench.peers: end -->"
# (figure, numerator (server, api, concurrency, per_call), key, goal): the ratios over KServe (and MLServer)
GOALS = (
    ("c64.unary", ("seqserve", "v2", 64, 1), "seqs_per_s", ">=", 1.5),
    ("c64.stream", ("seqserve", "v1-stream", 64, 1), "seqs_per_s", ">=", 3.0),
    ("b64", ("seqserve", "v2", BIG_CLIENTS, BIG_CALL), "seqs_per_s", ">=", 1.2),
    ("c1.p50", ("seqserve", "v2", 1, 1), "p50_ms", "<=", 1.0),
)
API_NAMES = {"v2": "ModelInfer (v2)", "v1-unary": "Encode (v1)", "v1-stream": "EncodeStream (v1)"}


def venv_python(peer: str) -> Path:
    return PEERS_DIR / f"{peer}-venv" / "bin" / "python"


def setup() -> None:
    """Create bench/.peers/<peer>-venv with the pinned packages (pip's own progress shown)."""
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    (PEERS_DIR / ".gitignore").write_text("*\n")  # the venvs never reach git
    for peer, pins in PINS.items():
        folder = PEERS_DIR / f"{peer}-venv"
        print(f"bench.peers: creating {folder.relative_to(ROOT)}: {' '.join(pins)}", flush=True)
        venv.create(folder, with_pip=True, clear=True)
        python = str(venv_python(peer))
        subprocess.run([python, "-m", "pip", "install", "--upgrade", "pip"], check=True)
        subprocess.run([python, "-m", "pip", "install", *pins], check=True)


def run_in_loopback_namespace(argv: list[str]) -> int:
    """Re-run `python -m bench.peers argv` in a new network namespace whose only interface is `lo` (up)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise SystemExit("bench.peers needs unshare and ip (util-linux, iproute2)")
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "netns",
               sys.executable, "-m", "bench.peers", *argv]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, NETNS_ENV: "1"}).returncode


def wait_v2_ready(served: Served, port: int, model: str, timeout: float = 120.0) -> Served:
    """Poll ModelReady on 127.0.0.1:port until the model is ready; fills `served.port`/`target`."""
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    served.port, served.target = port, f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise RuntimeError(f"{served.name} exited with {served.proc.returncode}: "
                               f"{served.log_path.read_text()[-2000:]}")
        try:
            with tc.InferenceServerClient(served.target) as client:
                if client.is_model_ready(model):
                    return served
        except InferenceServerException:  # not listening yet
            pass
        time.sleep(0.2)
    served.stop()
    raise TimeoutError(f"{served.name}: {model} not ready within {timeout}s")


def model_file(model: str) -> Path:
    from seqserve.repository import latest_version

    return latest_version(REPOSITORY, model).model_file


def start_server(name: str, model: str, work_dir: Path) -> Served:
    """One server on 127.0.0.1 (KServe: every interface of the namespace, i.e. loopback), model ready."""
    if name == "seqserve":
        return real_server(REPOSITORY, work_dir, "seqserve", "--intra-op-threads", str(THREADS)).wait_ready()
    if name == "kserve":
        grpc_port, http_port = free_port(), free_port()
        served = Served("kserve", ["-m", "bench.peer_runtimes.kserve_model", "--model_name", model,
                                   "--model_file", str(model_file(model)), "--threads", str(THREADS),
                                   "--grpc_port", str(grpc_port), "--http_port", str(http_port),
                                   "--enable_latency_logging", "false"],
                        work_dir, env={"KSERVE_LOGLEVEL": "WARNING"}, python=str(venv_python("kserve")))
        return wait_v2_ready(served, grpc_port, model)
    if name == "mlserver":
        folder, grpc_port = mlserver_folder(model, work_dir), free_port()
        settings = json.loads((folder / "settings.json").read_text())
        settings.update(grpc_port=grpc_port, http_port=free_port())
        (folder / "settings.json").write_text(json.dumps(settings, indent=1))
        mlserver = str(venv_python("mlserver").parent / "mlserver")
        served = Served("mlserver", [mlserver, "start", str(folder)], work_dir, python=str(venv_python("mlserver")))
        return wait_v2_ready(served, grpc_port, model)
    raise ValueError(f"unknown server {name!r}: expected one of {', '.join(SERVERS)}")


def mlserver_folder(model: str, work_dir: Path) -> Path:
    """A copy of bench/peer_runtimes/mlserver/ with the model's settings under its name and its file."""
    folder = work_dir / "mlserver"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / model).mkdir(parents=True)
    shutil.copy(RUNTIMES / "mlserver" / "settings.json", folder / "settings.json")
    settings = json.loads((RUNTIMES / "mlserver" / "model-settings.json").read_text())
    settings["name"] = model
    settings["parameters"]["uri"] = str(model_file(model))
    (folder / model / "model-settings.json").write_text(json.dumps(settings, indent=1))
    return folder


def scenarios(name: str, served: Served, model: str, pad_to: int, warmup_s: float,
              duration_s: float) -> dict[str, list[dict[str, Any]]]:
    """A server's scenarios by load generator module: v2 for every server, v1 for seqserve too."""
    base = {"server": name, "target": served.target, "pid": served.pid, "model": model,
            "warmup_s": warmup_s, "duration_s": duration_s}
    shape = {"pad_to": pad_to, "lengths": True} if name == "mlserver" else {}  # one shape for its batcher
    loads = [(c, 1) for c in CONCURRENCY] + [(BIG_CLIENTS, BIG_CALL)]
    plan = {"bench.oip_loadgen": [base | shape | {"label": f"{name}/v2/c{c}x{k}", "api": "v2", "mode": "v2",
                                                  "concurrency": c, "per_call": k, "outputs": ANSWER}
                                  for c, k in loads]}
    if name == "seqserve":
        plan["bench.loadgen"] = [base | {"label": f"{name}/v1-{mode}/c{c}x{k}", "api": f"v1-{mode}", "mode": mode,
                                         "concurrency": c, "per_call": k, "packed": k > 1, "outputs": V1_ANSWER}
                                 for mode in ("unary", "stream") for c, k in loads if mode == "unary" or k == 1]
    return plan


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has spent so far (/proc/stat: all but idle and iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in
                                                                Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (servers, load generators)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def others_cores(seconds: float = 1.0) -> float:
    """Cores' worth of CPU that processes not ours used over the next `seconds`."""
    busy, own, t0 = machine_busy_s(), own_cpu_s(), time.monotonic()
    time.sleep(seconds)
    return (machine_busy_s() - busy - (own_cpu_s() - own)) / (time.monotonic() - t0)


def wait_quiet(limit_s: float = 120.0) -> float:
    """Wait (up to `limit_s`) until other processes use under OTHERS_MAX cores; what they used last."""
    deadline, used = time.monotonic() + limit_s, others_cores()
    while used > OTHERS_MAX and time.monotonic() < deadline:
        print(f"bench.peers: the machine is busy ({used:.2f} cores not ours), waiting", file=sys.stderr, flush=True)
        time.sleep(5)
        used = others_cores()
    return used


def measure_server(name: str, model: str, payloads: Path, pad_to: int, work_dir: Path, round_: int,
                   warmup_s: float, duration_s: float) -> list[dict[str, Any]]:
    """Start one server, run its scenarios (each load generator its own process), stop it; every result
    carries `others_cores`: the CPU that processes not ours used meanwhile (cores' worth, whole span)."""
    busy, own, t0 = machine_busy_s(), own_cpu_s(), time.monotonic()
    served = start_server(name, model, work_dir)
    results = []
    try:
        for module, plan in scenarios(name, served, model, pad_to, warmup_s, duration_s).items():
            tag = f"{name}-{module.rsplit('.', 1)[1]}-r{round_}"
            for result in run_loadgen({"payloads": str(payloads), "scenarios": plan}, work_dir, tag, module):
                results.append(result | {"round": round_})
                print(f"bench.peers: round {round_} {result['label']}: {result['seqs_per_s']:.0f} seq/s, "
                      f"p50 {result['p50_ms']:.2f} ms, {result['errors']} errors", file=sys.stderr, flush=True)
    finally:
        served.stop()
    others = (machine_busy_s() - busy - (own_cpu_s() - own)) / (time.monotonic() - t0)
    return [r | {"others_cores": others} for r in results]


# --- the correctness probe -------------------------------------------------------------------------

def probe_requests(sequences: list[np.ndarray], round_: int, pad_to: int,
                   traffic: str = "mixed") -> list[tuple[int, np.ndarray, bool]]:
    """One round's requests: (sequence index, x (1, T or pad_to, F), send lengths).

    `mixed`: the even ones padded to `pad_to` with lengths, the odd ones unpadded without;
    `padded`: every one padded (one shape: the traffic MLServer's batcher can join)."""
    rng = np.random.default_rng(round_)
    picks = rng.choice(len(sequences), PROBE_REQUESTS, replace=False)
    requests = []
    for i, index in enumerate(picks):
        steps = sequences[index]  # (T, F)
        padded = traffic == "padded" or i % 2 == 0
        x = np.pad(steps, ((0, pad_to - len(steps)), (0, 0))) if padded else steps  # (T', F)
        requests.append((int(index), np.ascontiguousarray(x[None], dtype=np.float32), padded))
    return requests


async def probe_server(target: str, model: str, sequences: list[np.ndarray], reference: list[np.ndarray],
                       pad_to: int, traffic: str = "mixed", rounds: int = PROBE_ROUNDS) -> dict[str, Any]:
    """Concurrent requests of `traffic` (see probe_requests), `rounds` times; logits against `reference`."""
    import tritonclient.grpc as tc
    import tritonclient.grpc.aio as tca

    async def one(client, index: int, x: np.ndarray, padded: bool) -> np.ndarray:
        inputs = [tc.InferInput("x", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        if padded:
            inputs.append(tc.InferInput("lengths", [1], "INT64"))
            inputs[1].set_data_from_numpy(np.array([len(sequences[index])], dtype=np.int64))
        result = await client.infer(model, inputs, outputs=[tc.InferRequestedOutput("logits")])
        return result.as_numpy("logits")

    counts: dict[str, Any] = {"rounds": rounds, "requests": 0, "wrong": 0, "failed": 0, "rounds_with_wrong": 0,
              "rounds_with_failed": 0, "max_abs_diff": 0.0, "first_failure": ""}
    client = tca.InferenceServerClient(target)
    try:
        for r in range(rounds):
            requests = probe_requests(sequences, r, pad_to, traffic)
            answers = await asyncio.gather(*(one(client, *req) for req in requests), return_exceptions=True)
            wrong = failed = 0
            for (index, _, _), answer in zip(requests, answers, strict=True):
                if isinstance(answer, BaseException):
                    failed += 1
                    counts["first_failure"] = counts["first_failure"] or str(answer)[:200]
                    continue
                diff = (float(np.abs(answer.reshape(-1) - reference[index]).max())
                        if answer.size == reference[index].size else float("inf"))
                counts["max_abs_diff"] = max(counts["max_abs_diff"], diff)
                wrong += diff > PROBE_ATOL
            counts["requests"] += len(requests)
            counts["wrong"] += wrong
            counts["failed"] += failed
            counts["rounds_with_wrong"] += wrong > 0
            counts["rounds_with_failed"] += failed > 0
    finally:
        await client.close()
    return counts


def reference_logits(model: str, sequences: list[np.ndarray]) -> list[np.ndarray]:
    """In-process onnxruntime on each unpadded sequence alone: logits (C,)."""
    from seqserve.inference import open_session

    session = open_session(model_file(model), 1)
    return [session.run(["logits"], {"x": s[None], "lengths": np.array([len(s)], dtype=np.int64)})[0][0]
            for s in sequences]


# --- figures, table, plot --------------------------------------------------------------------------

def pick(results: list[dict[str, Any]], server: str, api: str, concurrency: int, per_call: int,
         round_: int) -> dict[str, Any]:
    return next(r for r in results if (r["server"], r["api"], r["concurrency"], r["per_call"], r["round"])
                == (server, api, concurrency, per_call, round_))


def figures_from(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per goal, the median over rounds of seqserve / KServe (with the goal) and seqserve / MLServer (without)."""
    rounds = sorted({r["round"] for r in results})
    peers = sorted({r["server"] for r in results} - {"seqserve"}, key=SERVERS.index)
    figures = {}
    for name, (server, api, c, k), key, op, goal in GOALS:
        for peer in peers:
            ratios = [pick(results, server, api, c, k, n)[key] / pick(results, peer, "v2", c, k, n)[key]
                      for n in rounds]
            value = statistics.median(ratios)
            is_goal = peer == "kserve"
            figures[f"peers.{name}.{peer}"] = {
                "value": value, "ratios": ratios, "key": key,
                "goal": f"{op} {goal:g}" if is_goal else None,
                "met": (value >= goal if op == ">=" else value <= goal) if is_goal else None,
                "what": f"seqserve {API_NAMES[api]} / {peer} ModelInfer, {key}, {c} client(s) x {k} seq/call"}
    return figures


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (server, api, load): median seq/s, p50 and p99 over rounds, errors summed."""
    keys = sorted({(r["server"], r["api"], r["concurrency"], r["per_call"]) for r in results},
                  key=lambda t: (SERVERS.index(t[0]), list(API_NAMES).index(t[1]), t[3], t[2]))
    rows = []
    for server, api, c, k in keys:
        runs = [r for r in results if (r["server"], r["api"], r["concurrency"], r["per_call"]) == (server, api, c, k)]
        rows.append({"server": server, "api": api, "concurrency": c, "per_call": k,
                     "seqs_per_s": statistics.median(r["seqs_per_s"] for r in runs),
                     "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                     "errors": sum(r["errors"] for r in runs),
                     "first_error": next((r["first_error"] for r in runs if r["first_error"]), "")})
    return rows


def section(figures: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
            probes: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION_START,
        "## Peers: seqserve vs KServe ModelServer and MLServer",
        "",
        f"`python -m bench.peers`, {meta['when']} at `{meta.get('commit', '?')}` ({meta['wall_s']:.0f} s): model "
        f"`{meta['model']}`, every server on onnxruntime {meta['onnxruntime']} with {THREADS} intra-op threads and "
        f"seqserve's session options, one server at a time in a loopback-only network namespace, "
        f"{meta['rounds']} rounds (server order reversed every round) of {meta['warmup_s']:g} s warm-up + "
        f"{meta['duration_s']:g} s per scenario, median over {rounds_used(meta)}. Load: bench.oip_loadgen "
        f"(tritonclient.grpc.aio `infer`, logits + probabilities) for every server; seqserve's own API through "
        f"bench.loadgen. KServe {meta['versions'].get('kserve', '?')}: synchronous `predict`, no batching. "
        f"MLServer {meta['versions'].get('mlserver', '?')}: adaptive batching (64 / 1 ms), `parallel_workers` 0; "
        f"its requests padded to {meta['pad_to']} steps with lengths (its batcher "
        "joins requests of one shape only). "
        f"Other processes on the machine used at most {meta.get('others_cores_max', float('nan')):.2f} cores' worth "
        f"of CPU while a server was measured in those rounds ({meta.get('repeated', 0)} server round(s) measured "
        f"again for going over {OTHERS_MAX:g}).",
        "",
        "| figure | value | goal | met | what |",
        "|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        met = "" if f["met"] is None else ("yes" if f["met"] else "**no**")
        lines.append(f"| `{name}` | {f['value']:.2f} | {f['goal'] or '(info)'} | {met} | {f['what']} |")
    lines += ["", "| server | API | clients × seq/call | seq/s | p50 ms | p99 ms | errors |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['server']} | {API_NAMES[r['api']]} | {r['concurrency']} × {r['per_call']} | "
                     f"{r['seqs_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")
    if probes:
        lines += ["", f"Correctness probe: {PROBE_ROUNDS} rounds of {PROBE_REQUESTS} concurrent one-sequence "
                  f"requests of mixed lengths (7-{meta['pad_to']} steps), `mixed`: half padded by the client to "
                  f"{meta['pad_to']} steps with lengths, half unpadded without; `padded`: all padded, with lengths. "
                  f"Logits against in-process onnxruntime on the unpadded sequence (max abs difference <= "
                  f"{PROBE_ATOL:g}).", "",
                  "| server | traffic | requests | wrong answers | failed calls | rounds with a wrong / failed answer "
                  "| max abs diff (answered) | first failure |", "|---|---|---|---|---|---|---|---|"]
        for server, by_traffic in probes.items():
            for traffic, p in by_traffic.items():
                failure = p["first_failure"].replace("|", "/").replace("\n", " ")[:120]
                lines.append(f"| {server} | {traffic} | {p['requests']} | {p['wrong']} | {p['failed']} | "
                             f"{p['rounds_with_wrong']} / {p['rounds_with_failed']} of {p['rounds']} | "
                             f"{p['max_abs_diff']:.1e} | {failure} |")
    lines += ["", "![throughput vs concurrency, one line per server and API](peers_throughput.png)"]
    return "\n".join([*lines, "", SECTION_END])


def rounds_used(meta: dict[str, Any]) -> str:
    """How the section names the rounds its medians are over: all of them, or which."""
    used = meta.get("rounds_used", list(range(meta["rounds"])))
    if len(used) == meta["rounds"]:
        return "rounds"
    return (f"rounds {', '.join(map(str, used))} of 0-{meta['rounds'] - 1} (the others: other processes took over "
            f"{OTHERS_MAX:g} cores even when measured again)")


def plot(rows: list[dict[str, Any]], path: Path, model: str) -> None:
    """Throughput vs concurrency (one sequence per call), one line per server and API."""
    from bench.plots import plt, save  # matplotlib on its Agg backend

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = sorted({(r["server"], r["api"]) for r in rows},
                   key=lambda t: (SERVERS.index(t[0]), list(API_NAMES).index(t[1])))
    for server, api in lines:
        points = sorted((r["concurrency"], r["seqs_per_s"]) for r in rows
                        if (r["server"], r["api"], r["per_call"]) == (server, api, 1))
        ax.plot(*zip(*points, strict=True), "-" if server == "seqserve" else "--", marker="o",
                label=f"{server} {API_NAMES[api]}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    ax.set_xlabel("concurrent clients (one sequence per call)")
    ax.set_ylabel("sequences / s")
    ax.set_title(f"{model}: throughput vs concurrency, {THREADS} onnxruntime threads each")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


# --- the run ---------------------------------------------------------------------------------------

def source_commit() -> str:
    """The commit measured (short hash, "+changes" when server/ or seqserve/ differ from it), or "?"."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        return "?"
    changed = subprocess.run(["git", "status", "--porcelain", "--", "server", "seqserve"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if changed else "")


def peer_versions() -> dict[str, str]:
    versions = {}
    for peer in ("kserve", "mlserver"):
        code = f"import importlib.metadata as m; print(m.version('{peer}'))"
        done = subprocess.run([str(venv_python(peer)), "-c", code], capture_output=True, text=True)
        versions[peer] = done.stdout.strip() or "?"
    return versions


def probe_all(servers: tuple[str, ...], model: str, sequences: list[np.ndarray], pad_to: int, work_dir: Path,
              rounds: int = PROBE_ROUNDS) -> dict[str, dict[str, dict[str, Any]]]:
    """Per server, per traffic (mixed, padded): the probe's counts."""
    reference = reference_logits(model, sequences)
    probes: dict[str, dict[str, dict[str, Any]]] = {}
    for name in servers:
        served = start_server(name, model, work_dir)
        try:
            probes[name] = {traffic: asyncio.run(probe_server(served.target, model, sequences, reference, pad_to,
                                                              traffic, rounds)) for traffic in PROBE_TRAFFIC}
        finally:
            served.stop()
        for traffic, p in probes[name].items():
            print(f"bench.peers: probe {name} {traffic}: {p['wrong']} wrong, {p['failed']} failed of {p['requests']}",
                  file=sys.stderr, flush=True)
    return probes


def measure_all(servers: tuple[str, ...], model: str, payloads: Path, pad_to: int, work_dir: Path, rounds: int,
                warmup_s: float, duration_s: float, retries: int = 2) -> list[dict[str, Any]]:
    """Every server once per round, the order reversed every other round. A server's round runs when the
    machine is quiet, and again (at most `retries` times) when other processes took over OTHERS_MAX cores."""
    results = []
    for r in range(rounds):
        for name in servers if r % 2 == 0 else servers[::-1]:
            for attempt in range(retries + 1):
                quiet = wait_quiet()
                run = [x | {"attempt": attempt, "others_before": quiet} for x in
                       measure_server(name, model, payloads, pad_to, work_dir, r, warmup_s, duration_s)]
                if run[0]["others_cores"] <= OTHERS_MAX:
                    break
                print(f"bench.peers: round {r} {name}: other processes used {run[0]['others_cores']:.2f} cores "
                      f"meanwhile{', again' if attempt < retries else ', kept'}", file=sys.stderr, flush=True)
            results += run
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="create bench/.peers/{kserve,mlserver}-venv and exit")
    parser.add_argument("--model", default="jv_bilstm_attn", help="model every server serves")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all servers (>= 2 for a figure worth citing)")
    parser.add_argument("--duration", type=float, default=3.0, help="measuring window per scenario, seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window, seconds")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="servers to run")
    parser.add_argument("--probe-only", action="store_true", help="only the correctness probe (nothing written)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                        help="the RESULTS.md whose peer section to write ('' for none)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "peers.json", help="raw results")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "peers_throughput.png", help="the plot")
    parser.add_argument("--render", type=Path, metavar="PEERS_JSON",
                        help="measure nothing: write the section, plot and --json again from a run's peers.json")
    args = parser.parse_args(argv)
    if args.setup:
        setup()
        return 0
    if args.render:
        saved = json.loads(args.render.read_text())
        report(saved["results"], saved["probes"], saved["meta"], saved["machine"], args)
        return 0
    if os.environ.get(NETNS_ENV) != "1":
        return run_in_loopback_namespace(argv)
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise SystemExit(f"bench.peers: expected a network namespace with only lo, found {', '.join(interfaces)}")
    servers = tuple(args.servers)
    missing = [s for s in servers if s != "seqserve" and not venv_python(s).exists()]
    if missing:
        raise SystemExit(f"no venv for {', '.join(missing)}: run `python -m bench.peers --setup` first")
    from bench.common import test_sequences

    sequences, _, _ = test_sequences()
    pad_to = max(len(s) for s in sequences)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work_dir = Path(tmp)
        probes = probe_all(servers, args.model, sequences, pad_to, work_dir)
        if args.probe_only:
            print(json.dumps(probes, indent=1))
            return 0
        payloads = work_dir / "payloads.npz"
        np.savez(payloads, steps=np.concatenate(sequences), lengths=np.array([len(s) for s in sequences]))
        results = measure_all(servers, args.model, payloads, pad_to, work_dir, args.rounds, args.warmup,
                              args.duration)
    machine = machine_info()
    meta = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "wall_s": time.time() - started,
            "model": args.model, "rounds": args.rounds, "warmup_s": args.warmup, "duration_s": args.duration,
            "pad_to": pad_to, "threads": THREADS, "commit": source_commit(), "onnxruntime": machine["onnxruntime"],
            "versions": peer_versions()}
    report(results, probes, meta, machine, args)
    return 0


def clean_rounds(results: list[dict[str, Any]]) -> list[int]:
    """The rounds in which other processes stayed under OTHERS_MAX for every server; all rounds if under 2 did."""
    rounds = sorted({r["round"] for r in results})
    clean = [n for n in rounds if all(r["others_cores"] <= OTHERS_MAX for r in results if r["round"] == n)]
    return clean if len(clean) >= 2 else rounds


def report(results: list[dict[str, Any]], probes: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any],
           machine: dict[str, Any], args: argparse.Namespace) -> None:
    """Figures and table from the clean rounds; peers.json (every round), the plot and the section."""
    used = clean_rounds(results)
    kept = [r for r in results if r["round"] in used]
    figures, rows = figures_from(kept), table_rows(kept)
    meta = meta | {"rounds_used": used, "others_cores_max": max(r["others_cores"] for r in kept),
                   "repeated": len({(r["server"], r["round"]) for r in results if r["attempt"] > 0})}
    write_json(args.json, {"figures": figures, "table": rows, "probes": probes, "results": results, "meta": meta,
                           "machine": machine})
    plot(rows, args.plot, meta["model"])
    text = section(figures, rows, probes, meta)
    if args.results:
        write_section(Path(args.results), SECTION_START, SECTION_END, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
