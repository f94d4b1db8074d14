"""One onnxruntime session per model version, checked against the I/O contract and warmed up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from seqserve.contract import Architecture, input_names, input_specs, output_names
from seqserve.repository import ModelVersion, RepositoryError

log = logging.getLogger(__name__)
WARM_UP_SHAPES = ((1, 8), (8, 32))  # (batch, time) run once per model before serving


@dataclass(frozen=True)
class BatchInputs:
    x: np.ndarray  # (B, T, F) float32
    lengths: np.ndarray  # (B,) int64
    h0: np.ndarray | None = None  # (L, B, H) streaming models
    c0: np.ndarray | None = None  # (L, B, H) streaming LSTM


class ModelRuntime:
    """Runs one model version; `run` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, version: ModelVersion, threads: int, spinning: bool = False) -> None:
        self.version = version
        self.arch: Architecture = version.architecture
        self.input_names = input_names(self.arch)
        self.output_names = output_names(self.arch)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning pool threads burn a core between runs, which the gRPC event loop needs (bench/PROFILE.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(str(version.model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RepositoryError(f"{version.model_file}: onnxruntime cannot load it: {exc}") from None
        self._check_contract()

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def number(self) -> int:
        return self.version.version

    def _check_contract(self) -> None:
        declared_in = [i.name for i in self.session.get_inputs()]
        declared_out = [o.name for o in self.session.get_outputs()]
        if declared_in != self.input_names or declared_out != self.output_names:
            raise RepositoryError(
                f"{self.version.model_file}: I/O {declared_in} -> {declared_out} breaks the contract "
                f"{self.input_names} -> {self.output_names}"
            )
        for spec, actual in zip(input_specs(self.arch), self.session.get_inputs()):
            fixed = [d for d in spec.shape if isinstance(d, int)]
            if [d for d in actual.shape if isinstance(d, int)] != fixed:
                raise RepositoryError(
                    f"{self.version.model_file}: input {spec.name} has shape {actual.shape}, contract {spec.shape}"
                )

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((self.arch.num_layers, batch, self.arch.hidden_size), dtype=np.float32)

    def run(self, inputs: BatchInputs) -> dict[str, np.ndarray]:
        feeds = {"x": inputs.x, "lengths": inputs.lengths}
        if self.arch.streaming:
            batch = inputs.x.shape[0]
            feeds["h0"] = inputs.h0 if inputs.h0 is not None else self.zero_state(batch)
            if self.arch.has_cell_state:
                feeds["c0"] = inputs.c0 if inputs.c0 is not None else self.zero_state(batch)
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def warm_up(self) -> None:
        """Run a few shapes once so the first real request does not pay for allocations; a model that
        loads but cannot run raises RepositoryError."""
        F = self.arch.input_size
        try:
            for batch, time in WARM_UP_SHAPES:
                x = np.zeros((batch, time, F), dtype=np.float32)  # (B, T, F)
                self.run(BatchInputs(x, np.full(batch, time, dtype=np.int64)))
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
            raise RepositoryError(f"{self.version.model_file}: warm-up run failed: {exc}") from None
        log.info("warmed up", extra={"model": self.name, "version": self.number})
