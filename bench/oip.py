"""The Open Inference Protocol's throughput against seqserve.v1's, in one run.

    python -m bench.oip [--quick] [--model jv_bilstm_attn] [--results bench/RESULTS.md]

One real server (`python -m server`, its own process). For 1 and 64 concurrent clients, the same
load two ways, one sequence per call from the JapaneseVowels test split: `Encode` through
bench.loadgen, and `infer` (ModelInfer) through `tritonclient.grpc.aio` unchanged
(bench.oip_loadgen), each load generator a process of its own, the two orders alternating over
rounds. Both ask for the same answer: Encode's default (h_n, c_n, attention, context, logits,
probabilities, label), the same tensors by name on v2. The figure per concurrency is the median over
rounds of v2 seq/s / v1 seq/s; goal: at least 0.85 (v2 within 15 % of v1).

Writes bench/oip.json and the "Open Inference Protocol" section of RESULTS.md (between its markers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPOSITORY, ROOT, machine_info, write_json, write_section
from bench.procs import real_server, run_loadgen
from seqserve.repository import latest_version
from seqserve.server.oip.tensors import model_outputs

CONCURRENCY = (1, 64)
GOAL = 0.85
PER_STEP = ("outputs", "step_logits")  # left out of Encode's default answer, so out of v2's here too
SECTION_START = "<!-- bench.oip: start -->"
SECTION_END = "<!-- bench.oip: end -->"


def same_answer(model: str) -> list[str]:
    """The v2 outputs that carry what Encode answers by default."""
    return [name for name in model_outputs(latest_version(REPOSITORY, model).architecture) if name not in PER_STEP]


def scenario(api: str, server, model: str, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    s = {"label": f"{api}/c{concurrency}", "api": api, "target": server.target, "pid": server.pid, "model": model,
         "mode": "unary" if api == "v1" else "v2", "concurrency": concurrency, "per_call": 1,
         "warmup_s": warmup_s, "duration_s": duration_s}
    return s | ({"outputs": same_answer(model)} if api == "v2" else {})


def measure_all(server, payloads: Path, work_dir: Path, model: str, rounds: int, warmup_s: float,
                  duration_s: float) -> list[dict[str, Any]]:
    """Every (round, concurrency, api) once; within a round and concurrency the api order alternates."""
    results = []
    for r in range(rounds):
        for c in CONCURRENCY:
            order = ("v1", "v2") if (r + CONCURRENCY.index(c)) % 2 == 0 else ("v2", "v1")
            for api in order:
                plan = {"payloads": str(payloads),
                        "scenarios": [scenario(api, server, model, c, warmup_s, duration_s)]}
                module = "bench.loadgen" if api == "v1" else "bench.oip_loadgen"
                [result] = run_loadgen(plan, work_dir, f"{api}-c{c}-r{r}", module)
                results.append(result | {"round": r})
                print(f"bench.oip: round {r} {api} c{c}: {result['seqs_per_s']:.0f} seq/s, "
                      f"{result['errors']} errors", file=sys.stderr, flush=True)
    return results


def figures_from(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rounds = sorted({r["round"] for r in results})
    figures = {}
    for c in CONCURRENCY:
        pairs = [{api: next(x for x in results if (x["round"], x["concurrency"], x["api"]) == (n, c, api))
                  for api in ("v1", "v2")} for n in rounds]
        figures[f"oip.c{c}"] = paired_figure(pairs)
    return figures


def paired_figure(pairs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """One concurrency level's figure from its rounds' v1/v2 results, measured next to each other."""
    ratios = [p["v2"]["seqs_per_s"] / p["v1"]["seqs_per_s"] for p in pairs]
    value = statistics.median(ratios)

    def median(api: str, key: str) -> float:
        return statistics.median(p[api][key] for p in pairs)

    def cpu_per_seq_us(api: str, key: str) -> float:
        return statistics.median(1e6 * p[api][key] / max(1, p[api]["calls"]) for p in pairs)

    return {
        "value": value, "goal": f">= {GOAL:g}", "met": value >= GOAL, "ratios": ratios,
        "v1_seqs_per_s": median("v1", "seqs_per_s"), "v2_seqs_per_s": median("v2", "seqs_per_s"),
        "v1_p50_ms": median("v1", "p50_ms"), "v2_p50_ms": median("v2", "p50_ms"),
        "v1_p99_ms": median("v1", "p99_ms"), "v2_p99_ms": median("v2", "p99_ms"),
        "v1_server_cpu_us_per_seq": cpu_per_seq_us("v1", "server_cpu_s"),
        "v2_server_cpu_us_per_seq": cpu_per_seq_us("v2", "server_cpu_s"),
        "v1_client_cpu_us_per_seq": cpu_per_seq_us("v1", "client_cpu_s"),
        "v2_client_cpu_us_per_seq": cpu_per_seq_us("v2", "client_cpu_s"),
        "errors": sum(p[api]["errors"] for p in pairs for api in ("v1", "v2")),
    }


def section(figures: dict[str, dict[str, Any]], model: str, rounds: int, duration_s: float, when: str) -> str:
    """The RESULTS.md section: the figure rows, then the numbers behind them."""
    lines = [
        SECTION_START,
        "## Open Inference Protocol (KServe v2) vs seqserve.v1",
        "",
        f"`python -m bench.oip`, {when}: model `{model}`, one sequence per call, {rounds} round(s) of "
        f"{duration_s:g} s per side, v1 through `Encode` (bench.loadgen) and v2 through `tritonclient.grpc.aio` "
        "`infer` (bench.oip_loadgen), the same answer asked for; median over rounds.",
        "",
        "| figure | value | goal | met | what |",
        "|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        lines.append(f"| `{name}` | {f['value']:.3f} | {f['goal']} | {'yes' if f['met'] else '**no**'} | "
                     "v2 seq/s / v1 seq/s |")
    lines += ["", "| clients | v1 seq/s | v2 seq/s | v1 p50 / p99 ms | v2 p50 / p99 ms | server CPU µs/seq v1 / v2 "
              "| client CPU µs/seq v1 / v2 |", "|---|---|---|---|---|---|---|"]
    for name, f in figures.items():
        lines.append(f"| {name.removeprefix('oip.c')} | {f['v1_seqs_per_s']:.0f} | {f['v2_seqs_per_s']:.0f} | "
                     f"{f['v1_p50_ms']:.2f} / {f['v1_p99_ms']:.2f} | {f['v2_p50_ms']:.2f} / {f['v2_p99_ms']:.2f} | "
                     f"{f['v1_server_cpu_us_per_seq']:.0f} / {f['v2_server_cpu_us_per_seq']:.0f} | "
                     f"{f['v1_client_cpu_us_per_seq']:.0f} / {f['v2_client_cpu_us_per_seq']:.0f} |")
    return "\n".join([*lines, "", SECTION_END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="jv_bilstm_attn", help="model to serve the load to")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per side (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency (default 3)")
    parser.add_argument("--duration", type=float, default=4.0, help="measuring window per side, seconds")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                        help="the RESULTS.md whose Open Inference Protocol section to write ('' for none)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "oip.json", help="raw results")
    args = parser.parse_args(argv)
    rounds, duration_s, warmup_s = (1, 1.0, 0.3) if args.quick else (args.rounds, args.duration, 1.0)
    from bench.common import test_sequences

    sequences, _, _ = test_sequences()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-oip-") as tmp:
        work_dir = Path(tmp)
        payloads = work_dir / "payloads.npz"
        np.savez(payloads, steps=np.concatenate(sequences), lengths=np.array([len(s) for s in sequences]))
        server = real_server(REPOSITORY, work_dir, "server").wait_ready()
        try:
            results = measure_all(server, payloads, work_dir, args.model, rounds, warmup_s, duration_s)
        finally:
            server.stop()
    figures = figures_from(results)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    write_json(args.json, {"figures": figures, "results": results, "machine": machine_info(), "when": when})
    text = section(figures, args.model, rounds, duration_s, when)
    if args.results:
        write_section(Path(args.results), SECTION_START, SECTION_END, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
