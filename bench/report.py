"""RESULTS.md: every figure against its goal, then the tables behind them."""

from __future__ import annotations

from typing import Any

from bench.serving import CONCURRENCY, MODES, PER_CALL, PER_CALL_CONCURRENCY, pick

# What holds a figure back when it misses: findings of `python -m bench.profile` (py-spy on the
# server process, per-thread CPU from /proc, the server's own metrics), see PROFILE.md.
NOTES = {
    "serving.": (
        "Two cores carry the gRPC stack, the event loop's Python, the load generator and onnxruntime at once "
        "(`python -m bench.profile`, no py-spy; /proc schedstat): at 64 unary clients the loop thread runs ~0.7 core "
        "and waits on the run queue for ~0.14 more, ~390 us of CPU a call, of which seqserve's own Python is ~90-100 "
        "us (measured in process through the real handlers, no sockets) and the rest gRPC aio and the loop's "
        "machinery. Fixed so far: onnxruntime's spinning pool thread (now off), the 5 ms GIL switch interval (now "
        "0.2 ms), per-sequence futures, metric lookups, queue-wait observations and softmax (now once per request or "
        "batch), two-thread onnxruntime runs that sync every step while the loop holds a core (now one thread a run, "
        "one run per thread at once), a big call's first part run on the event loop (now every part in a lane), and "
        "rounds that took only what was queued (now, under load, a round waits up to 2 ms for more: bigger batches, "
        "less onnxruntime CPU a sequence)."
    ),
    "latency.": (
        "A lone caller's sequence expected to run within 2 ms runs on the event loop with no thread hop (after an "
        "idle spell, so load still batches); what is left is decode, validation and the response's tensors."
    ),
    "batch_script.": (
        "Measured by bench/batch_bench.py (its owner's figure): `python bench/batch_bench.py` breaks it down."
    ),
    "runtime.": (
        "Batch 1 at T = 500 on LSTM: PyTorch on 1 thread is within 1.5x of onnxruntime on 2 (onnxruntime's LSTM kernel "
        "syncs its 2 threads every step; on a loaded 2-core machine each sync can wait for a descheduled thread)."
    ),
    "efficiency.": (
        "The recurrent step is a (64 x H) @ (H x gates*H) GEMM per direction and step, with a thread-pool sync per "
        "step: too small and too synchronised to reach the 2048^2 GEMM's rate on 2 shared threads; ORT's GRU "
        "(linear_before_reset) splits it into more, smaller GEMMs. The ratio also drops with machine load, since "
        "fine-grained syncs suffer from oversubscription far more than one large GEMM."
    ),
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out + [""]


def summary(figures: dict[str, dict]) -> list[str]:
    rows = [[f"`{name}`", f["value"], f["goal"] or "—", f["met"] if f["met"] is not None else "—", f["unit"]]
            for name, f in figures.items()]
    return _table(["figure", "value", "goal", "met", "what"], rows)


def runtime_tables(figures: dict[str, dict]) -> list[str]:
    out = []
    for name, f in figures.items():
        if not name.startswith("runtime."):
            continue
        cells = f["details"]["cells"]
        times = sorted({c["time"] for c in cells})
        rows = []
        for b in sorted({c["batch"] for c in cells}):
            row: list[Any] = [f"batch {b}"]
            for t in times:
                c = next(c for c in cells if c["batch"] == b and c["time"] == t)
                row.append(f"{c['speedup']:.2f}x ({c['ort_ms']:.2f} / {c['torch_ms']:.2f} ms)")
            rows.append(row)
        out += [f"**{name[len('runtime.'):]}** — PyTorch / onnxruntime (onnxruntime ms / PyTorch ms):", ""]
        out += _table([""] + [f"T = {t}" for t in times], rows)
    return out


def efficiency_table(figures: dict[str, dict]) -> list[str]:
    rows = []
    for name, f in figures.items():
        if name.startswith("efficiency."):
            d = f["details"]
            layers = ", ".join(f"{layer['op']} {layer['input']}->{layer['hidden']}x{layer['directions']}"
                               for layer in d["layers"])
            rows.append([name[len("efficiency."):], layers, d["recurrent_gflops"], d["ort_gemm_gflops"],
                         d["numpy_gemm_gflops"], f["value"]])
    return _table(["model", "recurrent layers (I->H x dirs)", "recurrent GFLOP/s", "ORT MatMul GFLOP/s",
                   "numpy sgemm GFLOP/s", "ratio"], rows)


def serving_table(serving: dict[str, Any], figures: dict[str, dict]) -> list[str]:
    import statistics

    reps = serving["reps"]

    def med(server: str, mode: str, c: int, key: str, k: int = 1) -> float:
        return statistics.median(pick(r["loadgen"], server, mode, c, k)[key] for r in reps)

    rows = []
    for mode in MODES:
        for c in CONCURRENCY:
            f = figures[f"serving.{mode}.c{c}"]
            d = f["details"]["per_rep"]
            rows.append([mode, c, med("server", mode, c, "seqs_per_s"), med("echo", mode, c, "seqs_per_s"),
                         statistics.median(p["ort_best_seqs_per_s"] for p in d),
                         statistics.median(p["ceiling_seqs_per_s"] for p in d), f["value"],
                         med("server", mode, c, "p50_ms"), med("server", mode, c, "p99_ms"),
                         med("echo", mode, c, "p50_ms")])
    f = figures["serving.per_call_64"]
    rows.append([f"unary, {PER_CALL} seq/call", PER_CALL_CONCURRENCY,
                 med("server", "unary", PER_CALL_CONCURRENCY, "seqs_per_s", PER_CALL),
                 med("echo", "unary", PER_CALL_CONCURRENCY, "seqs_per_s", PER_CALL),
                 statistics.median(p["ort_best_seqs_per_s"] for p in f["details"]["per_rep"]), None,
                 f"{f['value']:.3g} of ort_best",
                 med("server", "unary", PER_CALL_CONCURRENCY, "p50_ms", PER_CALL),
                 med("server", "unary", PER_CALL_CONCURRENCY, "p99_ms", PER_CALL),
                 med("echo", "unary", PER_CALL_CONCURRENCY, "p50_ms", PER_CALL)])
    if "serving.per_call_64_packed" in figures:  # results from before the packed form have no such rows
        f = figures["serving.per_call_64_packed"]
        rows.append([f"unary, {PER_CALL} seq/call, packed", PER_CALL_CONCURRENCY,
                     statistics.median(p["packed_seqs_per_s"] for p in f["details"]["per_rep"]), None,
                     statistics.median(p["ort_best_seqs_per_s"] for p in f["details"]["per_rep"]), None,
                     f"{f['value']:.3g} of ort_best; "
                     f"{figures['serving.packed_over_per_sequence']['value']:.3g}x the per-sequence form",
                     statistics.median(p["packed_p50_ms"] for p in f["details"]["per_rep"]), None, None])
        w = figures["serving.workers"]
        workers_key = f"{w['details']['workers']}_workers_seqs_per_s"
        rows.append([f"unary, --workers {w['details']['workers']}", 64,
                     statistics.median(p[workers_key] for p in w["details"]["per_rep"]),
                     None, None, None, f"{w['value']:.3g}x one process", None, None, None])
    rows.append(["unary, batching off", 64, med("server_nobatch", "unary", 64, "seqs_per_s"), None, None, None,
                 f"on/off {figures['serving.dynamic_batching']['value']:.3g} "
                 f"(onnxruntime b64/b1 {figures['serving.dynamic_batching']['details']['ort_b64_over_b1']:.3g})",
                 med("server_nobatch", "unary", 64, "p50_ms"), med("server_nobatch", "unary", 64, "p99_ms"), None])
    return _table(["calls", "clients", "served seq/s", "echo seq/s", "ort_best seq/s", "ceiling seq/s",
                   "served / ceiling", "p50 ms", "p99 ms", "echo p50 ms"], rows)


def int8_table(figures: dict[str, dict]) -> list[str]:
    rows = []
    for name, f in figures.items():
        if name.startswith("int8.") and name.endswith(".speedup"):
            d = f["details"]
            rows.append([name.split(".")[1], d["speed"]["b1"]["speedup"], d["speed"]["b64"]["speedup"],
                         d["fp32_accuracy"], d["int8_accuracy"], d["accuracy_drop"],
                         "yes" if d["recurrent_layers_quantized"] else "no (GRU: MatMuls only)"])
    return _table(["model", "speed-up batch 1", "speed-up batch 64", "fp32 accuracy", "int8 accuracy",
                   "drop", "recurrent layers int8"], rows)


def render(results: dict[str, Any], raw: dict[str, Any], command: str, plots: list[str]) -> str:
    figures = results["figures"]
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Mode `{results['mode']}`, {results['timestamp']}, {results['seconds']:.0f} s. Reproduce: `{command}`.",
        "",
        f"Machine: {m.get('cpu')}, {m.get('physical_cores')} physical cores ({m.get('affinity_cpus')} usable CPUs), "
        f"load average {m.get('loadavg_start', [0])[0]:.1f} at start, {m.get('loadavg_end', [0])[0]:.1f} at end; "
        f"Python {m.get('python')}, onnxruntime {m.get('onnxruntime')}, torch {m.get('torch', '—')}, "
        f"grpcio {m.get('grpcio')}. onnxruntime and PyTorch get {m.get('physical_cores')} intra-op threads "
        "everywhere (the server's setting).",
        "",
        "Every figure is a ratio of two measurements taken alternately in this run on the same cores; the "
        "machine is shared, so absolute numbers in the tables drift between runs while the ratios hold.",
        "",
        "## Figures",
        "",
        *summary(figures),
    ]
    missed = [n for n, f in figures.items() if f["met"] is False]
    if missed:
        lines += ["### Missed goals, and what holds them back", ""]
        for prefix, note in NOTES.items():
            group = [n for n in missed if n.startswith(prefix)]
            if group:
                listed = ", ".join(f"`{n}` {_fmt(figures[n]['value'])} ({figures[n]['goal']})" for n in group)
                lines.append(f"- {listed}. {note}")
        lines.append("")
    lines += ["## 1. onnxruntime vs PyTorch eager", "", *runtime_tables(figures),
              "## 2. Recurrent FLOP rate vs GEMM (batch 64, T = 100)", "", *efficiency_table(figures)]
    if "serving" in raw:
        lines += ["## 3-4. Serving vs its ceiling 1/(1/ort_best + 1/echo)", "",
                  f"Model `{raw['serving']['model']}`, JapaneseVowels test sequences, median of "
                  f"{len(raw['serving']['reps'])} repetition(s).", "", *serving_table(raw["serving"], figures)]
        lat = figures["latency.single_client"]["details"]["per_rep"]
        lines += [f"Single client: served p50 {lat[0]['served_p50_ms']:.3f} ms, p99 {lat[0]['served_p99_ms']:.3f} ms; "
                  f"onnxruntime batch-1 p50 {lat[0]['ort_b1_p50_ms']:.3f} ms; echo p50 {lat[0]['echo_p50_ms']:.3f} ms "
                  "(first repetition).", ""]
    batch = [n for n in figures if n.startswith("batch_script.")]
    if batch:
        lines += ["## 5. Batch script vs in-process onnxruntime", ""]
        lines += _table(["figure", "ratio", "local seq/s", "onnxruntime seq/s"],
                        [[f"`{n}`", figures[n]["value"], figures[n]["details"].get("local_seqs_per_s"),
                          figures[n]["details"].get("ort_seqs_per_s")] for n in batch])
    lines += ["## 6. int8 (dynamic quantization) vs fp32", "", *int8_table(figures)]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)
