"""ModelStatistics (Triton's statistics extension): what a model version has done since the server started.

Every figure is per model version:
- success / fail: this protocol's inference requests (ModelInfer and each ModelStreamInfer request)
  that reached the model version, with the nanoseconds they took from arrival to answer;
- queue (per request: its wait for its batch to start) and compute_infer (per batch run),
  inference_count (sequences) and execution_count (batches): every request and sequence the version's
  batcher ran, seqserve.v1's included, from its tally (server/metrics.py; the Prometheus series are
  labelled by model only and add its versions up).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

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


def model_statistics(name: str, version: int, outcomes: Outcomes, metrics: Metrics) -> pb.ModelStatistics:
    """The statistics of one model version: its requests on this protocol and its batcher's tally."""
    tally = metrics.tally(name, version)
    return pb.ModelStatistics(
        name=name, version=str(version), last_inference=outcomes.last_inference_ms,
        inference_count=tally.sequences,
        execution_count=tally.runs,
        inference_stats=pb.InferStatistics(
            success=pb.StatisticDuration(count=outcomes.success, ns=outcomes.success_ns),
            fail=pb.StatisticDuration(count=outcomes.fail, ns=outcomes.fail_ns),
            queue=pb.StatisticDuration(count=tally.waits, ns=tally.wait_ns),
            compute_infer=pb.StatisticDuration(count=tally.runs, ns=tally.run_ns),
        ),
    )
