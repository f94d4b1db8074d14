"""Where the model runs: one `Backend` interface, two implementations.

    LocalBackend   onnxruntime in this process, reading the model repository
    RemoteBackend  the seqserve gRPC service (any gRPC target, e.g. dns:/// over replicas): up to N
                   concurrent Encode calls, which the channel balances round_robin and retries with
                   exponential backoff when they fail UNAVAILABLE (and only then; seqserve.channel)

Both turn a batch of records into `Predictions` (a row per record) with the same labels,
probabilities (softmax of the logits, in float32) and requested tensors, so a job's output does
not depend on the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import numpy as np
import onnxruntime as ort

from seqserve.batch.errors import BackendError, RecordRejected
from seqserve.batch.records import Records
from seqserve.channel import Retries, Security, open_channel
from seqserve.client import SeqserveClient, encode_packed_request, results_of
from seqserve.contract import Architecture, output_names
from seqserve.cpu import physical_cores
from seqserve.inference import Batch, OnnxModel, open_session, per_sequence
from seqserve.numerics import softmax
from seqserve.outputs import predicted_labels
from seqserve.repository import ModelVersion, RepositoryError, latest_version, read_version

T = TypeVar("T")
# Tensors a job may add to each prediction (contract output names) and their shape per sequence.
TENSORS = {
    "context": "(D*H,) attention-weighted sum of outputs",
    "attention": "(T,) attention weights",
    "h_n": "(L*D, H) final hidden states",
    "c_n": "(L*D, H) final cell states (LSTM)",
    "outputs": "(T, D*H) last layer's per-step outputs",
    "logits": "(C,) class scores",
    "step_logits": "(T, C) running prediction per step",
}
# What to ask the server for, per tensor.
REMOTE_OUTPUT = {"context": "attention", "attention": "attention", "h_n": "hidden", "c_n": "hidden",
                 "outputs": "outputs", "logits": "logits", "step_logits": "step_logits"}
# onnxruntime's errors for a batch it cannot run.
ORT_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
              ort.capi.onnxruntime_pybind11_state.RuntimeException)
# The server rejects the sequences of a call (not the call's transport) with these codes.
REJECTING_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.OUT_OF_RANGE})


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    input_size: int
    class_labels: tuple[str, ...]
    tensors: frozenset[str]  # the TENSORS this model has


@dataclass(frozen=True)
class Prediction:
    """One sequence's prediction (a row of `Predictions`)."""

    id: str
    label: str
    label_index: int
    probabilities: np.ndarray  # (C,) float32
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # the requested TENSORS
    true_label: str | None = None  # from the input, when it has one


@dataclass
class Predictions:
    """The predictions for a batch of records, column by column (no Python object per sequence
    on the hot path: writers format or convert whole columns)."""

    ids: list[str]
    labels: list[str]
    label_index: np.ndarray  # (B,) int64
    probabilities: np.ndarray  # (B, C) float32
    true_labels: list[str | None]  # from the input, None where it has none
    tensors: dict[str, list[np.ndarray]] = field(default_factory=dict)  # requested TENSORS, one array per row

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Prediction]:
        for i, rid in enumerate(self.ids):
            yield Prediction(rid, self.labels[i], int(self.label_index[i]), self.probabilities[i],
                             {t: v[i] for t, v in self.tensors.items()}, self.true_labels[i])

    def slice(self, start: int, stop: int) -> Predictions:
        return Predictions(self.ids[start:stop], self.labels[start:stop], self.label_index[start:stop],
                           self.probabilities[start:stop], self.true_labels[start:stop],
                           {t: v[start:stop] for t, v in self.tensors.items()})

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        """One Predictions of several (at least one)."""
        return cls(
            [i for p in parts for i in p.ids], [label for p in parts for label in p.labels],
            np.concatenate([p.label_index for p in parts]), np.concatenate([p.probabilities for p in parts]),
            [t for p in parts for t in p.true_labels],
            {t: [a for p in parts for a in p.tensors[t]] for t in parts[0].tensors},
        )

    def finite(self) -> bool:
        """No NaN or Inf in the probabilities or tensors."""
        return bool(np.isfinite(self.probabilities).all()) and all(
            np.isfinite(a).all() for values in self.tensors.values() for a in values)

    @property
    def nbytes(self) -> int:
        return self.probabilities.nbytes + sum(a.nbytes for v in self.tensors.values() for a in v)


class Backend(Protocol):
    info: ModelInfo
    concurrency: int  # how many `infer` calls the pipeline may have in flight at once

    def infer(self, records: Records) -> Predictions:
        """One prediction per record, in order; thread-safe. Raises RecordRejected or BackendError."""
        ...

    def close(self) -> None: ...



def model_tensors(arch: Architecture) -> frozenset[str]:
    return frozenset(output_names(arch)) & frozenset(TENSORS)


def check_tensors(requested: Iterable[str], info: ModelInfo) -> tuple[str, ...]:
    requested = tuple(dict.fromkeys(requested))
    unknown = [t for t in requested if t not in TENSORS]
    if unknown:
        raise BackendError(f"--include: unknown {unknown}; choose from {', '.join(TENSORS)}")
    missing = [t for t in requested if t not in info.tensors]
    if missing:
        raise BackendError(f"--include: model {info.name} v{info.version} has no {', '.join(missing)} output")
    return requested


def resolve_version(repository: str | Path, model: str, version: int = 0) -> ModelVersion:
    try:
        if version:
            return read_version(Path(repository) / model / str(version))
        return latest_version(repository, model)
    except (RepositoryError, FileNotFoundError) as exc:
        raise BackendError(f"model {model!r} in {repository}: {exc}") from None


class OrtModel:
    """One onnxruntime session for one model version: padded batches in, per-sequence results out."""

    def __init__(self, version: ModelVersion, tensors: Iterable[str] = (), threads: int = 0,
                 model_bytes: bytes | None = None) -> None:
        """`model_bytes`: the model.onnx contents, for a process that cannot read `version.path` (a Ray actor)."""
        self.version = version
        self.arch = version.architecture
        labels = tuple(version.class_labels) or tuple(str(i) for i in range(self.arch.num_classes))
        self.info = ModelInfo(version.name, version.version, self.arch.input_size, labels, model_tensors(self.arch))
        self.tensors = check_tensors(tensors, self.info)
        self.threads = min(threads or physical_cores(), physical_cores())
        try:
            session = open_session(model_bytes if model_bytes is not None else version.model_file, self.threads)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"{version.model_file}: onnxruntime cannot load it: {exc}") from None
        self.model = OnnxModel(session, self.arch)
        self.fetch = ["logits", *(t for t in self.tensors if t != "logits")]

    @property
    def session(self) -> ort.InferenceSession:
        return self.model.session

    def predict(self, records: Records) -> Predictions:
        """One prediction per record; RecordRejected when onnxruntime fails on the batch."""
        x, lengths = records.padded()  # (B, T, F), (B,)
        try:
            out = self.model.run(Batch(x, lengths), self.fetch)
        except ORT_ERRORS as exc:
            raise RecordRejected(f"onnxruntime: {exc}") from None
        logits = out["logits"]  # (B, C)
        indices, names = predicted_labels(logits, self.info.class_labels)
        tensors = {}
        if self.tensors:
            rows = per_sequence({name: out[name] for name in self.tensors}, lengths)
            tensors = {name: [row[name] for row in rows] for name in self.tensors}
        return Predictions(records.ids, names, indices, softmax(logits), records.labels, tensors)


class LocalBackend:
    """onnxruntime in this process, on worker threads, so reading the next records overlaps with
    inference (onnxruntime releases the GIL). `runs` batches run at once, `threads` (0: the physical
    cores) split between them; runs 0: one run per thread. The recurrent kernels sync their threads at
    every time step, so one-thread runs side by side do more than one many-thread run (measured on 2
    cores: two one-thread runs 1.2-1.3x the sequences/s of one two-thread run, every input format)."""

    def __init__(self, repository: str | Path, model: str, version: int = 0, tensors: Iterable[str] = (),
                 threads: int = 0, runs: int = 0) -> None:
        if runs < 0:
            raise BackendError(f"--runs must be 0 (one per thread) or more, got {runs}")
        total = min(threads or physical_cores(), physical_cores())
        runs = runs or total
        self.concurrency = runs
        self.model = OrtModel(resolve_version(repository, model, version), tensors, max(1, total // runs))
        self.info = self.model.info

    def infer(self, records: Records) -> Predictions:
        return self.model.predict(records)

    def close(self) -> None:
        pass


# A batch job would rather wait out a lone server's restart than fail a chunk: ~7.5 s of waits in all
# (0.5 + 1 + 2 + 4) against the interactive default's 0.75 s.
BATCH_RETRIES = Retries(initial_backoff_s=0.5, max_backoff_s=5.0)


def checked_call(fn: Callable[[], T], what: str, retries: Retries) -> T:
    """fn(), one gRPC call; the channel has already retried it while it failed UNAVAILABLE (its service
    config's retryPolicy, seqserve.channel.Retries). What still fails: INVALID_ARGUMENT,
    RESOURCE_EXHAUSTED and OUT_OF_RANGE raise RecordRejected (the sequences are at fault), anything
    else BackendError."""
    try:
        return fn()
    except grpc.RpcError as exc:
        code = exc.code()
        message = f"{what}: {code.name}: {exc.details()}"
        if code == grpc.StatusCode.UNAVAILABLE:
            raise BackendError(f"{message} (gRPC retried it up to {retries.retries} times)") from None
        if code in REJECTING_CODES:
            raise RecordRejected(message) from None
        raise BackendError(message) from None


class RemoteBackend:
    """The seqserve gRPC service. The model version is pinned when the job starts, so a server that
    loads a newer version mid-run does not mix versions in one output."""

    def __init__(self, target: str, model: str, version: int = 0, tensors: Iterable[str] = (),
                 streams: int = 4, retries: Retries = BATCH_RETRIES, timeout: float = 120.0,
                 security: Security = Security()) -> None:
        if streams < 1:
            raise BackendError(f"--streams must be at least 1, got {streams}")
        self.target = target
        self.concurrency = streams
        self.retries = retries
        self.client = SeqserveClient(target, timeout=timeout, channel=open_channel(target, security, retries))
        try:
            meta = checked_call(lambda: self.client.get_model(model, version), f"{target}: GetModel", retries)
        except RecordRejected as exc:
            self.client.close()
            raise BackendError(str(exc)) from None
        except BackendError:
            self.client.close()
            raise
        labels = tuple(meta.class_labels)
        available = frozenset(t.name for t in meta.outputs) & frozenset(TENSORS)
        self.info = ModelInfo(meta.name, meta.version, meta.input_features, labels, available)
        self.tensors = check_tensors(tensors, self.info)
        self.outputs = sorted({REMOTE_OUTPUT[t] for t in self.tensors}) or ["logits"]  # empty would mean the default

    def infer(self, records: Records) -> Predictions:
        request = encode_packed_request(self.info.name, records.contiguous_steps(), records.lengths, records.ids,
                                        self.outputs, self.info.version)
        response = checked_call(lambda: self.client.stub.Encode(request, timeout=self.client.timeout),
                                f"{self.target}: Encode", self.retries)
        results = results_of(response)
        if len(results) != len(records):
            raise BackendError(f"{self.target}: Encode answered {len(results)} results for {len(records)}")
        return Predictions(
            records.ids, [res.label for res in results],
            np.array([res.label_index for res in results], dtype=np.int64),
            np.stack([res.probabilities for res in results]), records.labels,
            {t: [getattr(res, t) for res in results] for t in self.tensors},
        )

    def close(self) -> None:
        self.client.close()
