"""Server settings: one dataclass, filled from command-line flags with SEQSERVE_* environment defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from seqserve.channel import MAX_MESSAGE_BYTES
from seqserve.cpu import physical_cores

from .batching import BatchPolicy, runs_at_once


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path = Path("model_repository")
    host: str = "[::]"
    port: int = 50051
    metrics_port: int = 8000  # Prometheus /metrics over HTTP; 0 disables it
    metrics_host: str = "0.0.0.0"
    intra_op_threads: int = 0  # onnxruntime threads per session; 0 = physical cores
    ort_spinning: bool = False  # let onnxruntime's idle pool threads spin (costs a core between runs)
    single_thread_below: int = 16  # runs of several threads: smaller batches run on a one-thread session (0: never)
    # Batching: the defaults (and what was measured to choose them) are BatchPolicy's.
    batching: bool = BatchPolicy.enabled  # dynamic batching of concurrent requests
    max_batch_size: int = BatchPolicy.max_batch_size  # sequences per onnxruntime run
    # onnxruntime runs at once, each in its own inference thread, sharing the intra-op threads;
    # 0 = one per thread, so every run has one thread (bench: less CPU per sequence under load, README Performance)
    concurrent_batches: int = BatchPolicy.concurrent_batches
    max_queue_delay_ms: float = BatchPolicy.max_queue_delay_ms  # under load, a round's wait for more requests
    inline_max_ms: float = BatchPolicy.inline_max_ms  # a lone caller's quick sequence runs at once (0 = never)
    inline_min_idle_ms: float = BatchPolicy.inline_min_idle_ms
    # The inference thread needs the GIL back after every onnxruntime run; with Python's default 5 ms
    # a busy event loop makes it wait that long each time (measured: batches 8x slower, bench/PROFILE.md).
    switch_interval_ms: float = 0.2
    # uvloop (libuv) runs the event loop's own machinery in C: 10-20 % less server CPU per call at 64
    # clients than asyncio's loop, unary and streaming (interleaved A/B on 2 cores; README, Performance).
    uvloop: bool = True
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT); threads are split between them
    reuse_port: bool = False  # let other processes bind the same port (set for each of --workers' processes)
    padding_waste: float = BatchPolicy.padding_waste  # split a batch when padding would exceed this part of real steps
    padding_min_split: int = BatchPolicy.padding_min_split  # ... unless that cuts off fewer sequences than this
    parallel_call_min: int = BatchPolicy.parallel_call_min  # a call this big runs as parts side by side (0 = never)
    max_sequence_length: int = 4096  # steps in one sequence
    max_sequences_per_request: int = 256
    max_message_bytes: int = MAX_MESSAGE_BYTES  # the clients' (seqserve.channel) limit too
    max_concurrent_streams: int = 256
    # Connections are closed (GOAWAY, calls in flight finish) after this long, so clients resolve the
    # service's name again and find replicas added by a scale-up (gRPC re-resolves only on a new connection).
    max_connection_age_s: float = 300.0
    max_concurrent_rpcs: int = 1024  # calls of any kind being served at once; more get RESOURCE_EXHAUSTED
    max_queued_sequences: int = BatchPolicy.max_queued  # per model version: sequences waiting for a batch
    max_stream_in_flight: int = 64  # EncodeStream: requests queued or unsent per stream before reading pauses
    # ...and their answers' bytes (upper-bound estimates), per stream and for all streams of the process:
    # a client that stops reading holds at most this much server memory, whatever the answers' size.
    max_stream_unsent_bytes: int = 16 * 1024 * 1024
    max_process_unsent_bytes: int = 256 * 1024 * 1024
    max_stream_buffer_steps: int = 16384  # steps buffered for a bidirectional StreamSequence
    max_stream_chunks: int = 65536  # messages in one StreamSequence, empty chunks included
    max_live_sequences: int = 4096  # Open Inference Protocol: sequences (sequence_id) whose state the server keeps
    sequence_idle_timeout_s: float = 60.0  # a sequence with no request for this long ends and its state is freed
    grace_seconds: float = 10.0  # time in-flight calls get to finish on shutdown
    drain_seconds: float = 1.0  # on shutdown, at least this long answering new calls UNAVAILABLE (within grace)
    warmup: bool = True
    allow_empty: bool = False  # start even when the repository holds no loadable model
    reflection: bool = True  # serve grpc.reflection (v1 and v1alpha)
    replica: str = ""  # this replica's name, in every call's `seqserve-replica` trailing metadata ("": the hostname)
    tls_cert: str = ""  # PEM certificate chain: serve TLS on the gRPC port (with tls_key)
    tls_key: str = ""  # PEM private key
    tls_client_ca: str = ""  # PEM CA bundle: require client certificates signed by it (mutual TLS)
    auth_token_file: str = ""  # file holding a bearer token every call must present (health exempt)

    @property
    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(enabled=self.batching, max_batch_size=self.max_batch_size,
                           max_queue_delay_ms=self.max_queue_delay_ms, padding_waste=self.padding_waste,
                           padding_min_split=self.padding_min_split, max_queued=self.max_queued_sequences,
                           concurrent_batches=self.batch_runs, inline_max_ms=self.inline_max_ms,
                           inline_min_idle_ms=self.inline_min_idle_ms, parallel_call_min=self.parallel_call_min)

    @property
    def threads(self) -> int:
        return min(self.intra_op_threads or physical_cores(), physical_cores())

    @property
    def batch_runs(self) -> int:
        """onnxruntime runs at once: --concurrent-batches, or one per intra-op thread."""
        return runs_at_once(self.concurrent_batches, self.threads)

    @property
    def run_threads(self) -> int:
        """Intra-op threads of one batch run: the threads shared among the runs at once."""
        return max(1, self.threads // self.batch_runs)


_HELP = {
    "model_repository": "model repository root (<model>/<version>/model.onnx + metadata.json)",
    "host": "address to bind",
    "port": "gRPC port (0 picks a free one)",
    "metrics_port": "Prometheus metrics HTTP port (0 disables)",
    "metrics_host": "address the metrics endpoint binds",
    "intra_op_threads": "onnxruntime intra-op threads per session (0 = physical cores; never more)",
    "single_thread_below": "when a run has several threads (--concurrent-batches below the threads), batches of "
                           "fewer sequences run on a one-thread onnxruntime session (its recurrent kernels sync "
                           "threads every step: one thread wins on small batches; 0: never)",
    "ort_spinning": "let onnxruntime's idle pool threads spin-wait (faster wake-up, burns CPU between runs)",
    "batching": "gather concurrent requests into one onnxruntime run",
    "max_batch_size": "most sequences in one onnxruntime run",
    "concurrent_batches": "onnxruntime runs at once, each in its own inference thread with --intra-op-threads / "
                          "this many threads (0: one run per thread, each on one thread: no per-step thread syncs, "
                          "which stall whenever the event loop holds a core)",
    "max_queue_delay_ms": "how long a request may wait for others to fill its batch",
    "inline_max_ms": "run a lone caller's sequence at once in its own call (skipping the queue and two thread "
                     "hops) when its expected run time, from this model's measured time per step, is at most this",
    "inline_min_idle_ms": "a request this long after the batcher went idle counts as a lone caller (may run inline)",
    "switch_interval_ms": "Python's GIL switch interval for the server process (Python's default: 5)",
    "uvloop": "run the event loop on uvloop (libuv; less CPU per call) rather than asyncio's own",
    "workers": "server processes on the one port (SO_REUSEPORT), each with its own event loop and sessions, "
               "splitting --intra-op-threads between them; metrics summed over all",
    "reuse_port": "let other processes bind the same port (each --workers process has it)",
    "padding_waste": "split a batch by length when padding exceeds this fraction of real steps",
    "padding_min_split": "never split a batch by length where that cuts off fewer sequences than this "
                         "(a small batch costs about as much per step as a bigger one)",
    "parallel_call_min": "a call of at least this many sequences (and at most --max-batch-size), alone in its "
                         "batch, runs as one part per intra-op thread side by side, each on a one-thread "
                         "onnxruntime session in a thread of its own (0: never; needs --intra-op-threads >= 2)",
    "max_sequence_length": "most steps in one sequence",
    "max_sequences_per_request": "most sequences in one Encode request",
    "max_message_bytes": "largest gRPC message accepted or sent",
    "max_concurrent_streams": "most open streaming calls",
    "max_connection_age_s": "close a client's connection after this long (it reconnects, re-resolving the name: "
                            "new replicas get traffic); calls in flight finish; 0 = never",
    "max_concurrent_rpcs": "most calls of any kind served at once; more are refused with RESOURCE_EXHAUSTED",
    "max_queued_sequences": "most sequences waiting for a batch, per model version; more are refused",
    "max_stream_in_flight": "EncodeStream: most requests queued or unanswered per stream before reading pauses",
    "max_stream_unsent_bytes": "EncodeStream and ModelStreamInfer: most bytes of answers (estimated before they run) "
                               "queued or unsent per stream; past it reading pauses until the client reads",
    "max_process_unsent_bytes": "the same bound for all streams of the process together",
    "max_stream_buffer_steps": "most steps a bidirectional StreamSequence may buffer",
    "max_stream_chunks": "most chunks (messages, empty ones included) in one StreamSequence",
    "max_live_sequences": "Open Inference Protocol: most sequences (sequence_id) whose state the server keeps at "
                          "once; starting another is refused with RESOURCE_EXHAUSTED",
    "sequence_idle_timeout_s": "Open Inference Protocol: a sequence with no request for this many seconds ends and "
                               "its state is freed",
    "grace_seconds": "time in-flight calls get to finish on SIGTERM/SIGINT",
    "drain_seconds": "on SIGTERM/SIGINT, answer new calls UNAVAILABLE for at least this long before closing "
                     "the port (at most grace_seconds)",
    "warmup": "run each model once before reporting SERVING",
    "allow_empty": "start even when the repository holds no loadable model (it may be filled later)",
    "reflection": "serve gRPC server reflection (grpc.reflection.v1 and v1alpha)",
    "replica": "this replica's name, sent as `seqserve-replica` trailing metadata on every call (empty: the hostname)",
    "tls_cert": "PEM certificate chain for TLS on the gRPC port (needs --tls-key)",
    "tls_key": "PEM private key for --tls-cert",
    "tls_client_ca": "PEM CA bundle: require and verify client certificates (mutual TLS)",
    "auth_token_file": "file holding the bearer token every call must send (authorization: Bearer ...); health exempt",
}


def _env_name(field_name: str) -> str:
    return "SEQSERVE_" + field_name.upper()


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def build_parser(env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="seqserve gRPC service on onnxruntime. Every flag also reads SEQSERVE_<FLAG> from the environment.",
    )
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kind = type(default)
        raw = env.get(_env_name(f.name))
        help_text = f"{_HELP[f.name]} [env {_env_name(f.name)}] (default: %(default)s)"
        if kind is bool:
            value = _parse_bool(raw) if raw is not None else default
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=help_text)
        else:
            value = kind(raw) if raw is not None else default
            parser.add_argument(flag, type=kind, default=value, help=help_text)
    return parser


def parse_config(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ServerConfig:
    args = build_parser(env).parse_args(argv)
    return ServerConfig(**vars(args))
