"""ModelStatistics (Triton's statistics extension): what a model version has done since the server started.

- success / fail: this protocol's inference requests (ModelInfer and each ModelStreamInfer request)
  that reached the model version, with the nanoseconds they took from arrival to answer;
- queue (per request: its wait for its batch to start) and compute_infer (per batch run),
  inference_count (sequences) and execution_count (batches): every request and sequence the model's
  batcher ran, seqserve.v1's included, from the Prometheus metrics the batcher keeps per model name
  (shared by its versions).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase

from seqserve.oip import grpc_service_pb2 as pb

from ..metrics import Metrics


@dataclass
class Outcomes:
    """One model version's requests on this protocol."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0  # wall clock, milliseconds since the epoch

    def record(self, ok: bool, started_ns: int) -> None:
        elapsed = time.perf_counter_ns() - started_ns
        if ok:
            self.success, self.success_ns = self.success + 1, self.success_ns + elapsed
        else:
            self.fail, self.fail_ns = self.fail + 1, self.fail_ns + elapsed
        self.last_inference_ms = time.time_ns() // 1_000_000


def _samples(metric: MetricWrapperBase, model: str) -> dict[str, float]:
    """One model's samples of a labelled metric, by sample name (`..._count`, `..._sum`, `..._total`)."""
    return {s.name: s.value for family in metric.collect() for s in family.samples
            if s.labels.get("model") == model and "le" not in s.labels}


def _duration(samples: dict[str, float], prefix: str) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=int(samples.get(f"{prefix}_count", 0)),
                                ns=int(samples.get(f"{prefix}_sum", 0.0) * 1e9))


def model_statistics(name: str, version: int, outcomes: Outcomes, metrics: Metrics) -> pb.ModelStatistics:
    queue = _samples(metrics.queue_seconds, name)
    compute = _samples(metrics.inference_seconds, name)
    sequences = _samples(metrics.sequences, name)
    return pb.ModelStatistics(
        name=name, version=str(version), last_inference=outcomes.last_inference_ms,
        inference_count=int(sequences.get("seqserve_sequences_total", 0)),
        execution_count=int(compute.get("seqserve_inference_seconds_count", 0)),
        inference_stats=pb.InferStatistics(
            success=pb.StatisticDuration(count=outcomes.success, ns=outcomes.success_ns),
            fail=pb.StatisticDuration(count=outcomes.fail, ns=outcomes.fail_ns),
            queue=_duration(queue, "seqserve_queue_seconds"),
            compute_infer=_duration(compute, "seqserve_inference_seconds"),
        ),
    )


def statistics_response(entries: Iterable[pb.ModelStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(model_stats=list(entries))
