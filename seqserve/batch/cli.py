"""Batch inference: files of sequences in, predictions out, on this machine, a seqserve server or Ray.

    python batch_infer.py --model jv_bilstm_attn --input JapaneseVowels_TEST.ts --output preds.jsonl
    python batch_infer.py --model jv_bilstm_attn --input seqs.parquet --output preds.parquet \\
        --server dns:///seqserve:50051 --streams 8
    python batch_infer.py --model jv_bilstm_attn --input seqs.jsonl --output preds.jsonl --ray

Exit status: 0 all records predicted, 3 some records failed (see the errors file), 1 the run
stopped on an error, 2 bad arguments, 130 interrupted (rerun with --resume). The logic lives in
seqserve/batch/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from seqserve.batch.backends import BATCH_RETRIES, TENSORS, Backend, LocalBackend, RemoteBackend
from seqserve.batch.errors import BatchError
from seqserve.batch.pipeline import BATCH_SIZE, CHUNK_SIZE, EXIT_FATAL, EXIT_INTERRUPTED, JobConfig, Summary, run_job
from seqserve.batch.readers import FORMATS, Fields
from seqserve.batch.writers import OUTPUT_FORMATS, ROWS_PER_FILE
from seqserve.channel import MAX_RETRIES, add_security_args, security_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch_infer.py",
        description="Predict every sequence of a file with a seqserve model: locally on onnxruntime (default), "
                    "through a seqserve server (--server) or as a Ray Data job (--ray).",
        epilog="Exit status: 0 all predicted; 3 some records failed (errors file); 1 stopped on an error; "
               "130 interrupted.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", type=Path, required=True,
                    help="sequences: .jsonl, .parquet (file or folder), .npz or UEA .ts")
    io.add_argument("--input-format", choices=FORMATS, help="input format (default: from the suffix)")
    io.add_argument("--output", type=Path, required=True,
                    help="predictions: a .jsonl file, or a .parquet folder of part files")
    io.add_argument("--output-format", choices=OUTPUT_FORMATS, help="output format (default: from the suffix)")
    io.add_argument("--errors", type=Path,
                    help="JSON Lines file of failed records and why (default: <output>.errors.jsonl; "
                         "written only if a record fails)")
    io.add_argument("--include", nargs="+", choices=list(TENSORS), default=[], metavar="TENSOR",
                    help="extra tensors in each prediction: " + "; ".join(f"{k} {v}" for k, v in TENSORS.items()))
    io.add_argument("--id-field", default="id", help="id key / column of JSON Lines and Parquet input")
    io.add_argument("--steps-field", default="steps", help="steps key / column of JSON Lines and Parquet input")
    io.add_argument("--label-field", default="label",
                    help="optional true-label key / column; when present the summary reports accuracy")
    io.add_argument("--resume", action="store_true",
                    help="continue an interrupted run: skip the ids already in the output and append")
    io.add_argument("--overwrite", action="store_true", help="replace an existing output")
    io.add_argument("--rows-per-file", type=int, default=ROWS_PER_FILE,
                    help="Parquet output: rows per part file (a killed run redoes at most one part)")
    io.add_argument("--summary-json", type=Path, help="also write the run's summary here as JSON")
    io.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar with sequences/s on stderr (default: when stderr is a terminal)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="model name")
    model.add_argument("--version", type=int, default=0, help="model version (0 = latest)")
    model.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                       help="sequences per model call (with --server: at most the server's max_sequences_per_request)")
    model.add_argument("--chunk-size", type=int, default=CHUNK_SIZE,
                       help="records read and sorted by length at a time (bounds memory; more = less padding)")

    local = parser.add_argument_group("local backend (default) and Ray")
    local.add_argument("--model-repository", type=Path,
                       default=Path(os.environ.get("SEQSERVE_MODEL_REPOSITORY", "model_repository")),
                       help="model repository root [env SEQSERVE_MODEL_REPOSITORY]")
    local.add_argument("--threads", type=int, default=0,
                       help="onnxruntime intra-op threads (0 = physical cores; never more), split between --runs. "
                            "With --ray: per actor, 0 = 1")
    local.add_argument("--runs", type=int, default=0,
                       help="onnxruntime runs at once (batches side by side, each with --threads / N threads; "
                            "0 = one per thread: one-thread runs side by side beat one many-thread run)")

    remote = parser.add_argument_group("remote backend")
    remote.add_argument("--server", metavar="TARGET",
                        help="predict through this seqserve gRPC server: HOST:PORT, or any gRPC target such as "
                             "dns:///seqserve:50051 (calls balanced round_robin over every address it resolves to)")
    remote.add_argument("--streams", type=int, default=4, help="concurrent Encode calls to the server")
    remote.add_argument("--retries", type=int, default=MAX_RETRIES, choices=range(MAX_RETRIES + 1), metavar="N",
                        help="attempts beyond the first of a call that fails UNAVAILABLE, by gRPC's own retry policy "
                             f"with exponential backoff, on any replica (0-{MAX_RETRIES}: gRPC caps a call at "
                             f"{MAX_RETRIES + 1} attempts; default %(default)s)")
    remote.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    add_security_args(parser)

    scale = parser.add_argument_group("Ray")
    scale.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run as a Ray Data job: a local Ray instance, or the cluster at ADDRESS (needs the "
                            "'ray' extra)")
    scale.add_argument("--ray-actors", type=int, default=0,
                       help="onnxruntime actors (0 = the cluster's CPUs / --threads, less one for the reader)")
    return parser


def job_config(args: argparse.Namespace) -> JobConfig:
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    return JobConfig(
        input=args.input, output=args.output, input_format=args.input_format, output_format=args.output_format,
        errors=args.errors, fields=Fields(args.id_field, args.steps_field, args.label_field),
        tensors=tuple(args.include), batch_size=args.batch_size, chunk_size=args.chunk_size,
        resume=args.resume, overwrite=args.overwrite, progress=progress, rows_per_file=args.rows_per_file,
    )


def run(args: argparse.Namespace) -> Summary:
    config = job_config(args)
    if args.ray is not None:
        from seqserve.batch.ray_job import run_ray_job

        return run_ray_job(config, args.model_repository, args.model, args.version, threads=args.threads or 1,
                           actors=args.ray_actors, address=args.ray)
    backend: Backend
    if args.server:
        backend = RemoteBackend(args.server, args.model, args.version, config.tensors, streams=args.streams,
                                retries=replace(BATCH_RETRIES, retries=args.retries), timeout=args.timeout,
                                security=security_from_args(args))
        name = f"remote {args.server} ({args.streams} streams)"
    else:
        local = LocalBackend(args.model_repository, args.model, args.version, config.tensors, args.threads,
                             args.runs)
        backend, name = local, f"local ({local.concurrency} x {local.model.threads} threads)"
    try:
        return run_job(config, backend, name)
    finally:
        backend.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.server and args.ray is not None:
        parser.error("--server and --ray are exclusive: Ray runs onnxruntime in its actors")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite are exclusive")
    for flag in ("batch_size", "chunk_size", "streams", "rows_per_file"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    # docker stop: SIGTERM ends the run like Ctrl-C, between two writes.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        summary = run(args)
    except (BatchError, OSError) as exc:  # OSError: the output folder is not writable, ...
        print(f"batch_infer: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("batch_infer: interrupted before the job started", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    print(f"batch_infer: {summary.line()}", file=sys.stderr if summary.error else sys.stdout)
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main())
