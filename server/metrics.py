"""Prometheus metrics, kept in a registry per server (no module globals), served over HTTP."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class VersionTally:
    """What one model version's batcher has done (the Prometheus series add a model's versions up).

    Only the event loop's thread writes it (the batcher observes there), so plain integers do."""

    waits: int = 0  # requests that waited for a batch
    wait_ns: int = 0
    runs: int = 0  # onnxruntime runs
    run_ns: int = 0
    sequences: int = 0


@dataclass(frozen=True)
class ModelMetrics:
    """One model version's metric children, resolved once (label lookups cost more than the observations),
    and its own tally."""

    queue_seconds: Histogram
    inference_seconds: Histogram
    batch_size: Histogram
    sequences: Counter
    side_by_side: Counter
    tally: VersionTally = field(default_factory=VersionTally)

    def observe_waits(self, started: float, enqueued_at: Iterable[float]) -> None:
        """Each request's wait for its batch: from its arrival to its round's start."""
        for arrived in enqueued_at:
            self.queue_seconds.observe(started - arrived)
            self.tally.waits += 1
            self.tally.wait_ns += int((started - arrived) * 1e9)

    def observe_batch(self, sequences: int, seconds: float) -> None:
        self.batch_size.observe(sequences)
        self.inference_seconds.observe(seconds)
        self.sequences.inc(sequences)
        self.tally.runs += 1
        self.tally.run_ns += int(seconds * 1e9)
        self.tally.sequences += sequences


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "seqserve_requests", "RPCs answered, by method and status code", ["method", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "seqserve_request_seconds", "RPC latency (streams: per message)", ["method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            "seqserve_queue_seconds", "time a request waited for its batch to start", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference_seconds = Histogram(
            "seqserve_inference_seconds", "onnxruntime time per batch", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "seqserve_batch_size", "sequences per onnxruntime run", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.sequences = Counter("seqserve_sequences", "sequences encoded", ["model"], registry=r)
        self.side_by_side = Counter("seqserve_side_by_side_calls", "big calls run as parts side by side, one per "
                                    "intra-op thread on one-thread sessions (--parallel-call-min)", ["model"],
                                    registry=r)
        # multiprocess_mode: how --workers' processes add up (ignored by a single process).
        self.open_streams = Gauge("seqserve_open_streams", "streaming calls open now", registry=r,
                                  multiprocess_mode="livesum")
        self.stream_unsent_bytes = Gauge("seqserve_stream_unsent_bytes", "bytes of streamed answers queued or "
                                         "unsent (upper-bound estimates; --max-process-unsent-bytes)", registry=r,
                                         multiprocess_mode="livesum")
        self.models_loaded = Gauge("seqserve_models_loaded", "model versions serving", registry=r,
                                   multiprocess_mode="livemax")
        self.models_failed = Gauge("seqserve_models_failed", "model versions that failed to load", registry=r,
                                   multiprocess_mode="livemax")
        self._http = None  # the /metrics HTTP server, once started
        self._rpc_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._tallies: dict[tuple[str, int], VersionTally] = {}

    def for_model(self, model: str, version: int = 0) -> ModelMetrics:
        """The metrics of one model version: Prometheus series labelled by model, a tally of its own."""
        return ModelMetrics(
            queue_seconds=self.queue_seconds.labels(model),
            inference_seconds=self.inference_seconds.labels(model),
            batch_size=self.batch_size.labels(model),
            sequences=self.sequences.labels(model),
            side_by_side=self.side_by_side.labels(model),
            tally=self._tallies.setdefault((model, version), VersionTally()),
        )

    def tally(self, model: str, version: int) -> VersionTally:
        """What one model version's batcher has done (all zero for a version that never ran)."""
        return self._tallies.get((model, version), VersionTally())

    def rpc(self, method: str, code: str) -> tuple[Counter, Histogram]:
        """The (request counter, latency histogram) children of one method and code, looked up once."""
        key = (method, code)
        if key not in self._rpc_children:
            self._rpc_children[key] = (self.requests.labels(method, code), self.request_seconds.labels(method))
        return self._rpc_children[key]

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint; returns its port."""
        self._http, _ = start_http_server(port, addr=addr, registry=self.registry)
        return self._http.server_port

    def shutdown(self) -> None:
        """Stop the /metrics endpoint, if it was started."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
