"""One onnxruntime session per model version, checked against the I/O contract and warmed up."""

from __future__ import annotations

import logging

import numpy as np

from seqserve.contract import input_specs
from seqserve.inference import Batch, OnnxModel, open_session
from seqserve.repository import ModelVersion, RepositoryError

log = logging.getLogger(__name__)
WARM_UP_SHAPES = ((1, 8), (8, 32), (32, 32))  # (batch, time) run once per model before serving: both sessions


class ModelRuntime(OnnxModel):
    """Runs one model version through the inference core; `run` is thread-safe (onnxruntime sessions are).

    A batch runs on `run_threads` intra-op threads (0: `threads`, the model's share of the cores). With
    `threads` > 1 it also has a one-thread session, as `one_thread` (a model of its own: the parts of a big
    call run on it side by side, one per thread) and, when runs have several threads, for batches under
    `single_thread_below`. With one-thread runs that is the runs' own session."""

    def __init__(self, version: ModelVersion, threads: int, spinning: bool = False,
                 single_thread_below: int = 0, run_threads: int = 0) -> None:
        """`single_thread_below`: batches of fewer sequences run on the one-thread session (0: never)."""
        self.version = version
        self.threads = threads
        run_threads = run_threads or threads
        try:
            session = open_session(version.model_file, run_threads, spinning)
            single = session if run_threads == 1 else open_session(version.model_file, 1, spinning)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RepositoryError(f"{version.model_file}: onnxruntime cannot load it: {exc}") from None
        small = (single_thread_below, single) if single is not session and single_thread_below > 1 else None
        super().__init__(session, version.architecture, small)
        one_thread = self if single is session else OnnxModel(single, version.architecture)
        self.one_thread = one_thread if threads > 1 else None
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
        for spec, actual in zip(input_specs(self.arch), self.session.get_inputs(), strict=True):
            fixed = [d for d in spec.shape if isinstance(d, int)]
            if [d for d in actual.shape if isinstance(d, int)] != fixed:
                raise RepositoryError(
                    f"{self.version.model_file}: input {spec.name} has shape {actual.shape}, contract {spec.shape}"
                )

    def warm_up(self) -> None:
        """Run a few shapes once so the first real request does not pay for allocations; a model that
        loads but cannot run raises RepositoryError."""
        F = self.arch.input_size
        try:
            for model in (self,) if self.one_thread in (None, self) else (self, self.one_thread):
                for batch, time in WARM_UP_SHAPES:
                    x = np.zeros((batch, time, F), dtype=np.float32)  # (B, T, F)
                    model.run(Batch(x, np.full(batch, time, dtype=np.int64)))
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
            raise RepositoryError(f"{self.version.model_file}: warm-up run failed: {exc}") from None
        log.info("warmed up", extra={"model": self.name, "version": self.number})
