"""Batch inference throughput: in-process onnxruntime vs batch_infer's local backend vs the server.

    python bench/batch_bench.py            # JapaneseVowels TEST tiled to 7,400 sequences
    python bench/batch_bench.py --quick    # 1,850 sequences, fewer repeats

On the same sequences, batch size and onnxruntime threads, one run prints side by side:

    ort in-process   sequences/s of session.run on length-sorted, padded batches already in memory: the
                     better of one run at a time on every thread and (when the job runs several) the
                     job's one-thread runs side by side
    local IN -> OUT  sequences/s of the batch job (seqserve.batch.run_job with the local backend)
                     from an input file to an output of those formats, and its ratio to the above
                     (goal: >= 0.9); results["local"][IN] for JSON Lines output (what bench/batchscript.py
                     reports), results["local_parquet_output"][IN] for Parquet
    remote N         sequences/s of the batch job through a `python -m server` subprocess with N
                     concurrent Encode calls

Each figure is the best of --repeats runs, the runs of each repeat back to back, so a busy
machine slows all of them alike; "paired" is the median of each repeat's ratio, and "cpu x ort"
the ratio of sequences per CPU-second of this process, which other load disturbs less. Results
also go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import real_server  # noqa: E402
from seqserve.batch.backends import LocalBackend, RemoteBackend  # noqa: E402
from seqserve.batch.pipeline import JobConfig, run_job  # noqa: E402
from seqserve.cpu import physical_cores  # noqa: E402
from seqserve.datasets import japanese_vowels_dir  # noqa: E402
from seqserve.inference import pad  # noqa: E402
from seqserve.ts_format import iter_ts  # noqa: E402

GOAL = 0.9
FORMATS = ("npz", "parquet", "jsonl")


def write_inputs(sequences: list[np.ndarray], folder: Path, formats: list[str]) -> dict[str, Path]:
    ids = [str(i) for i in range(len(sequences))]
    paths = {}
    if "npz" in formats:
        paths["npz"] = folder / "input.npz"
        np.savez(paths["npz"], steps=np.concatenate(sequences), lengths=np.array([len(s) for s in sequences]),
                 ids=np.array(ids))
    if "parquet" in formats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        paths["parquet"] = folder / "input.parquet"
        pq.write_table(pa.table({"id": ids, "steps": [s.tolist() for s in sequences]}), paths["parquet"])
    if "jsonl" in formats:
        paths["jsonl"] = folder / "input.jsonl"
        with paths["jsonl"].open("w") as f:
            for i, s in zip(ids, sequences, strict=True):
                f.write(json.dumps({"id": i, "steps": s.tolist()}) + "\n")
    return paths


RunName = tuple[str, str]  # (input format, output format) of a job run; ORT's two ways of running onnxruntime
ORT = ("ort", "one run")
ORT_SIDE_BY_SIDE = ("ort", "side by side")


class Rate(NamedTuple):
    wall: float  # sequences per second
    cpu: float  # sequences per CPU-second of this process (all its threads)


class Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rate(self, count: int) -> Rate:
        return Rate(count / (time.perf_counter() - self.wall), count / (time.process_time() - self.cpu))


def ort_in_process(backend: LocalBackend, sequences: list[np.ndarray], batch_size: int) -> Rate:
    """The bare session on length-sorted batches (padding included, file I/O not), `backend.concurrency`
    batches at a time on its session (one: every thread on one batch; N: one-thread runs side by side)."""
    session, features, n = backend.model.session, backend.info.input_size, backend.concurrency
    ordered = sorted(sequences, key=len)
    batches = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]

    def run_share(share: list[list[np.ndarray]]) -> None:
        for batch in share:
            x, lengths = pad(batch, features)  # (B, T, F), (B,): the core's padding
            session.run(["logits"], {"x": x, "lengths": lengths})

    clock = Clock()
    if n == 1:
        run_share(batches)
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(run_share, [batches[k::n] for k in range(n)]))
    return clock.rate(len(sequences))


def job_rate(backend, source: Path, output: Path, batch_size: int, expected: int) -> Rate:
    """The whole job: open, read, screen, predict, write, close."""
    clock = Clock()
    summary = run_job(JobConfig(input=source, output=output, overwrite=True, batch_size=batch_size), backend)
    rate = clock.rate(expected)
    if summary.written != expected or summary.exit_status != 0:
        raise SystemExit(f"batch job on {source} did not predict every sequence: {summary.line()}")
    return rate


def best_of(repeats: int, runs: dict[RunName, Callable[[], Rate]]) -> dict[RunName, list[Rate]]:
    """Every run of `runs` once per repeat, back to back."""
    rates: dict[RunName, list[Rate]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rates[name].append(run())
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,850 sequences, 2 repeats, remote at 1 and 4 streams")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "batch.json", help="JSON results")
    parser.add_argument("--ts", type=Path, help="a .ts file to tile (default: JapaneseVowels_TEST.ts from aeon)")
    parser.add_argument("--sequences", type=int, help="sequences after tiling (default 7,400; --quick 1,850)")
    parser.add_argument("--model", default="jv_bilstm_attn", help="model name")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository", help="repository root")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per onnxruntime run, everywhere")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads, in-process and local (0 = physical cores, as batch_infer)")
    parser.add_argument("--runs", type=int, default=0,
                        help="the local job's onnxruntime runs at once (batch_infer --runs, 0 = one per thread as its "
                             "default; the threads split between them); in-process onnxruntime always runs one batch "
                             "at a time on every thread")
    parser.add_argument("--repeats", type=int, help="runs of each measurement; the best counts (default 5; --quick 2)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS,
                        help="input formats of the local runs to a JSON Lines output (results['local'][format])")
    parser.add_argument("--parquet-out", nargs="*", default=["npz", "parquet"], choices=FORMATS,
                        help="input formats of local runs to a Parquet output (results['local_parquet_output'])")
    parser.add_argument("--streams", nargs="*", type=int, help="remote concurrency levels (default 1 4 8; --quick 1 4)")
    args = parser.parse_args(argv)
    count = args.sequences or (1850 if args.quick else 7400)
    repeats = args.repeats or (2 if args.quick else 5)
    streams = args.streams if args.streams is not None else ([1, 4] if args.quick else [1, 4, 8])
    threads = min(args.threads or physical_cores(), physical_cores())

    cases = [c.steps for c in iter_ts(args.ts or japanese_vowels_dir() / "JapaneseVowels_TEST.ts")]
    sequences = (cases * math.ceil(count / len(cases)))[:count]
    reference = LocalBackend(args.model_repository, args.model, threads=threads, runs=1)  # onnxruntime in-process
    local = LocalBackend(args.model_repository, args.model, threads=threads, runs=args.runs)  # the job's
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="batch_bench-") as tmp:
        folder = Path(tmp)
        pairs = [(f, "jsonl") for f in args.formats] + [(f, "parquet") for f in args.parquet_out]
        inputs = write_inputs(sequences, folder, sorted({source for source, _ in pairs}))
        runs: dict[RunName, Callable[[], Rate]] = {ORT: partial(ort_in_process, reference, sequences, args.batch_size)}
        if local.concurrency > 1:  # onnxruntime's other way to use the threads, as the job does
            runs[ORT_SIDE_BY_SIDE] = partial(ort_in_process, local, sequences, args.batch_size)
        for source, target in pairs:
            runs[(source, target)] = partial(job_rate, local, inputs[source], folder / f"out.{target}",
                                             args.batch_size, count)
        best_of(1, runs)  # warm-up: allocations, page cache
        rates = best_of(repeats, runs)
        remote: dict[int, list[Rate]] = {}
        if streams:
            server = real_server(args.model_repository, folder).wait_ready()
            try:
                source = inputs.get("npz") or next(iter(inputs.values()))  # the cheapest input to read
                for n in streams:
                    backend = RemoteBackend(server.target, args.model, streams=n)
                    try:
                        job_rate(backend, source, folder / "remote.jsonl", args.batch_size, count)  # warm-up
                        remote[n] = [job_rate(backend, source, folder / "remote.jsonl", args.batch_size, count)
                                     for _ in range(max(1, repeats // 2))]
                    finally:
                        backend.close()
            finally:
                server.stop()

    one_run, side_by_side = rates.pop(ORT), rates.pop(ORT_SIDE_BY_SIDE, [])
    ort = ([max(pair, key=lambda r: r.wall) for pair in zip(one_run, side_by_side, strict=True)] if side_by_side
           else one_run)
    ort_wall, ort_cpu = max(r.wall for r in ort), max(r.cpu for r in ort)
    results = {
        "model": args.model, "sequences": count, "batch_size": args.batch_size, "threads": threads,
        "runs": local.concurrency, "repeats": repeats, "goal_ratio": GOAL,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "ort_in_process": {"sequences_per_second": ort_wall, "sequences_per_cpu_second": ort_cpu,
                           "runs": [r._asdict() for r in ort],
                           "one_run_sequences_per_second": max(r.wall for r in one_run),
                           "side_by_side_sequences_per_second": max((r.wall for r in side_by_side), default=None)},
        "local": {}, "local_parquet_output": {}, "remote": {},
    }
    for (source, target), runs_ in rates.items():
        wall, cpu = max(r.wall for r in runs_), max(r.cpu for r in runs_)
        results["local" if target == "jsonl" else "local_parquet_output"][source] = {
            "sequences_per_second": wall, "ratio_to_ort": wall / ort_wall,
            "ratio_to_ort_one_run": wall / max(r.wall for r in one_run),
            "paired_ratio_median": statistics.median(a.wall / b.wall for a, b in zip(runs_, ort, strict=True)),
            "sequences_per_cpu_second": cpu, "cpu_ratio_to_ort": cpu / ort_cpu,
            "meets_goal": wall / ort_wall >= GOAL, "runs": [r._asdict() for r in runs_],
        }
    for n, runs_ in remote.items():
        wall = max(r.wall for r in runs_)
        results["remote"][str(n)] = {"streams": n, "sequences_per_second": wall, "ratio_to_ort": wall / ort_wall,
                                     "runs": [r._asdict() for r in runs_]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{count} sequences, batch size {args.batch_size}, {threads} onnxruntime thread(s), "
          f"local job {local.concurrency} run(s) at once, best of {repeats}; "
          f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'run':<26}{'seq/s':>9}{'x ort':>7}{'paired':>8}{'cpu x ort':>11}")
    print(f"{'ort in-process (best)':<26}{ort_wall:>9.0f}{1.0:>7.2f}{'':>8}{1.0:>11.2f}")
    in_process = results["ort_in_process"]
    one, sbs = in_process["one_run_sequences_per_second"], in_process["side_by_side_sequences_per_second"]
    print(f"{'  one run, all threads':<26}{one:>9.0f}{one / ort_wall:>7.2f}")
    if sbs is not None:
        print(f"{f'  {local.concurrency} one-thread runs':<26}{sbs:>9.0f}{sbs / ort_wall:>7.2f}")
    for key, target in (("local", "jsonl"), ("local_parquet_output", "parquet")):
        for source, r in results[key].items():
            mark = "" if r["meets_goal"] else f"  (< {GOAL})"
            print(f"{f'local {source} -> {target}':<26}{r['sequences_per_second']:>9.0f}{r['ratio_to_ort']:>7.2f}"
                  f"{r['paired_ratio_median']:>8.2f}{r['cpu_ratio_to_ort']:>11.2f}{mark}")
    for n, r in results["remote"].items():
        print(f"{f'remote {n} streams (npz)':<26}{r['sequences_per_second']:>9.0f}{r['ratio_to_ort']:>7.2f}")
    print("x ort: best seq/s over the best of ort in-process; paired: median of each repeat's ratio; "
          "cpu x ort: the same for sequences per CPU-second of this process (less sensitive to other load)")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
