"""The Open Inference Protocol's data plane, free of gRPC plumbing: health, metadata, inference, statistics.

A ModelInfer request is a padded batch: x (B, T, F) with optional lengths (B,) (absent: every row is
T long) and, for unidirectional models, optional h0/c0 (L, B, H). It is validated whole on arrival,
then split into its B sequences, which join the model's dynamic batcher beside seqserve.v1's Encode
traffic; the answers are put back into batch-shaped tensors (B, T, ...), zeros on padding, as the
ONNX model itself would give them. With `sequence_id` the request continues a sequence whose state
the server keeps (server/oip/sequences.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from importlib import metadata

import numpy as np

from seqserve.inference import PER_STATE, Packed, PackedOutputs
from seqserve.oip import grpc_service_pb2 as pb
from seqserve.outputs import Layout, layout_of, predicted_labels

from ..config import ServerConfig
from ..errors import InvalidInput, ModelNotFound, NotReady, excerpt
from ..metrics import Metrics
from ..registry import ModelRegistry, ServedModel
from ..validation import (
    check_answer_size,
    check_finite,
    check_finite_steps,
    check_lengths,
    check_sequence_count,
    first_row,
    label_bytes,
)
from .sequences import SequenceControl, SequenceStore, sequence_control
from .statistics import Outcomes, model_statistics
from .tensors import PLATFORM, TensorMeta, answer, answer_bytes, decode_inputs, model_inputs, model_outputs

SERVER_NAME = "seqserve"
EXTENSIONS = ["sequence", "statistics", "parameters"]  # Triton's names for the extensions served
MAX_VERSION_DIGITS = 18  # a version number fits in int64
CLASSIFICATION = "classification"  # Triton's output parameter for its classification extension (not served)


def version_number(text: str, field: str) -> int:
    """A version given as a string: empty (or "0") for the latest, else its number."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS):
        raise InvalidInput(field, f"must be empty (the latest) or a version number, got {excerpt(text)}")
    return int(text)


def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class InferCall:
    """A validated ModelInfer request, ready to run."""

    request: pb.ModelInferRequest
    model: ServedModel
    outputs: list[TensorMeta]  # in answer order
    x: np.ndarray  # (B, T, F)
    lengths: np.ndarray  # (B,)
    h0: np.ndarray | None  # (L, B, H)
    c0: np.ndarray | None  # (L, B, H)
    control: SequenceControl | None
    full_length: bool  # every row is T long: no padding to put back
    answer_bytes: int  # an upper bound of the ModelInferResponse's bytes
    started: int  # time.perf_counter_ns() as it arrived (the model's statistics)

    @property
    def fetch(self) -> frozenset[str]:
        """The model outputs the answer needs (probabilities and label come from the logits)."""
        return frozenset({"logits", *(meta.name for meta in self.outputs)})

    def sequences(self) -> Packed:
        """The rows without their padding, with the request's initial states."""
        return Packed.from_padded(self.x, self.lengths, self.h0, self.c0)

    def response(self, answers: PackedOutputs) -> pb.ModelInferResponse:
        values = [self._batched(meta, answers) for meta in self.outputs]
        return answer(self.outputs, values, model_name=self.model.name, model_version=str(self.model.version),
                      id=self.request.id)

    def _batched(self, meta: TensorMeta, answers: PackedOutputs) -> np.ndarray:
        """One output for the whole batch, shaped as the model gives it for x: per-step tensors (B, T, ...)
        with zeros on padding, states (L*D, B, H), the rest (B, ...)."""
        if meta.name == "label":
            _, names = predicted_labels(answers.arrays["logits"], self.model.runtime.version.class_labels)
            return np.array(names, dtype=object)  # (B,)
        value = answers.arrays[meta.name]
        layout = layout_of(meta.name)
        if layout is Layout.PER_STEP:
            B, T = self.x.shape[:2]
            return value.reshape(B, T, *value.shape[1:]) if self.full_length else answers.padded(meta.name, T)
        if layout is Layout.PER_STATE:
            return value.transpose(1, 0, 2)  # (B, L*D, H) -> (L*D, B, H)
        return value  # (B, ...)


class InferencePlane:
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.sequences = SequenceStore(config.max_live_sequences, config.sequence_idle_timeout_s)
        self.outcomes: defaultdict[tuple[str, int], Outcomes] = defaultdict(Outcomes)

    # --- health and metadata ----------------------------------------------------------------

    def server_live(self) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.registry.ready)

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    def find(self, name: str, version: str, field: str = "version") -> ServedModel:
        return self.registry.get(name, version_number(version, field))

    def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        """Ready: served, and its batcher running; an unknown model or version is simply not ready."""
        number = version_number(request.version, "version")
        try:
            model = self.registry.get(request.name, number)
        except (ModelNotFound, NotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=model.batcher.failure is None)

    def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        model = self.find(request.name, request.version)
        arch = model.runtime.arch
        return pb.ModelMetadataResponse(
            name=model.name, versions=[str(v) for v in self.registry.versions(model.name)], platform=PLATFORM,
            inputs=[m.metadata() for m in model_inputs(arch).values()],
            outputs=[m.metadata() for m in model_outputs(arch).values()],
        )

    def repository_index(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for model in self.registry.all():
            failure = model.batcher.failure
            if request.ready and failure is not None:
                continue
            response.models.add(name=model.name, version=str(model.version),
                                state="READY" if failure is None else "UNAVAILABLE",
                                reason="" if failure is None else "its batcher stopped after an internal error")
        return response

    def model_statistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        """Every version of every model, of the named model, or one version of it."""
        if not request.name:
            if request.version:
                raise InvalidInput("version", "a version needs a model name")
            models = self.registry.all()
        elif request.version:
            models = [self.find(request.name, request.version)]
        else:
            latest = self.find(request.name, "")
            models = [self.registry.get(latest.name, v) for v in self.registry.versions(latest.name)]
        return pb.ModelStatisticsResponse(model_stats=[
            model_statistics(m.name, m.version, self.outcomes[(m.name, m.version)], self.metrics) for m in models])

    # --- inference ------------------------------------------------------------------------------

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Validate, run and answer one request."""
        return await self.run(self.admit(request))

    def admit(self, request: pb.ModelInferRequest) -> InferCall:
        """Validate a request (a failure counts in its model's statistics); `run` runs it."""
        started = time.perf_counter_ns()
        model = self.find(request.model_name, request.model_version, "model_version")
        try:
            return self.prepare(request, model, started)
        except BaseException:
            self.outcomes[(model.name, model.version)].record(False, started)
            raise

    async def run(self, call: InferCall) -> pb.ModelInferResponse:
        """Run and answer a validated request. Everything up to a sequence's `enter` runs before the first
        await, so the requests of one stream, run in the order they were read, enter their sequences so."""
        outcomes = self.outcomes[(call.model.name, call.model.version)]
        try:
            response = await (self._run_in_sequence(call) if call.control is not None else self._run(call))
        except BaseException:
            outcomes.record(False, call.started)
            raise
        outcomes.record(True, call.started)
        return response

    def prepare(self, request: pb.ModelInferRequest, model: ServedModel, started: int) -> InferCall:
        """Check everything about a request before any of it is queued."""
        arch = model.runtime.arch
        control = sequence_control(request.parameters)
        inputs = decode_inputs(request, model_inputs(arch))
        if "x" not in inputs:
            raise InvalidInput("inputs", "the input 'x' is required")
        x = inputs["x"]  # (B, T, F)
        batch, steps = x.shape[:2]
        check_sequence_count(batch, "input 'x' rows", self.config, "no rows: the batch dimension is 0")
        h0, c0 = (self._state(inputs, name, batch) for name in ("h0", "c0"))
        stateful = control is not None or h0 is not None or c0 is not None
        lengths = self._lengths(inputs.get("lengths"), batch, steps, allow_empty=stateful)
        check_finite_rows(x, lengths)
        if control is not None:
            self._check_sequence(model, batch, h0, c0)
        outputs = self._outputs(request, model)
        size = self._answer_size(model, outputs, batch, steps)
        full_length = bool((lengths == steps).all())
        return InferCall(request, model, outputs, x, lengths, h0, c0, control, full_length, size, started)

    def _lengths(self, lengths: np.ndarray | None, batch: int, steps: int, allow_empty: bool) -> np.ndarray:
        """Each row's real steps (B,): as given (within 0..T), or T for every row when absent."""
        field = "input 'lengths'" if lengths is not None else "input 'x'"
        if lengths is None:
            lengths, shortest, longest = np.full(batch, steps, dtype=np.int64), steps, steps  # (B,)
        elif len(lengths) != batch:
            raise InvalidInput(field, f"{len(lengths)} lengths for {batch} rows of x")
        else:
            shortest, longest = int(lengths.min()), int(lengths.max())
        if shortest < 0 or longest > steps:
            row = first_row((lengths < 0) | (lengths > steps))
            raise InvalidInput(field, f"row {row}: length {lengths[row]} is not within 0..{steps} (x's time dimension)")
        check_lengths(lengths, lambda row: f"{field} row {row}", self.config, allow_empty)
        return lengths

    def _state(self, inputs: dict[str, np.ndarray], name: str, batch: int) -> np.ndarray | None:
        """An initial state input (L, B, H), its batch matching x's, finite."""
        state = inputs.get(name)
        if state is None:
            return None
        if state.shape[1] != batch:
            raise InvalidInput(f"input {name!r}", f"shape {list(state.shape)}: its batch dimension (1) must be "
                                                  f"x's, {batch}")
        check_finite(state, f"input {name!r}")
        return state

    def _check_sequence(self, model: ServedModel, batch: int, h0: np.ndarray | None, c0: np.ndarray | None) -> None:
        if not model.runtime.arch.streaming:
            raise InvalidInput("parameters['sequence_id']", f"model {model.name!r} is bidirectional: it needs the "
                                                            "whole sequence at once, so it keeps no sequences")
        if batch != 1:
            raise InvalidInput("input 'x'", f"a request in a sequence carries one row (batch 1), got {batch}")
        if h0 is not None or c0 is not None:
            name = "h0" if h0 is not None else "c0"
            raise InvalidInput(f"input {name!r}", "a request in a sequence continues from the state the server "
                                                  "keeps; send either sequence_id or h0/c0, not both")

    def _outputs(self, request: pb.ModelInferRequest, model: ServedModel) -> list[TensorMeta]:
        """The outputs asked for, in that order; none asked for: every output."""
        available = model_outputs(model.runtime.arch)
        if not request.outputs:
            return list(available.values())
        chosen: dict[str, TensorMeta] = {}
        for i, wanted in enumerate(request.outputs):
            name = wanted.name
            if name not in available:
                raise InvalidInput(f"outputs[{i}]", f"the model has no output {excerpt(name)} "
                                                    f"(outputs: {', '.join(available)})")
            if name in chosen:
                raise InvalidInput(f"outputs[{i}]", f"output {name!r} asked for twice")
            if wanted.parameters and CLASSIFICATION in wanted.parameters:
                raise InvalidInput(f"outputs[{i}].parameters['{CLASSIFICATION}']",
                                   "the classification extension is not served; ask for 'probabilities' and 'label'")
            chosen[name] = available[name]
        return list(chosen.values())

    def _answer_size(self, model: ServedModel, outputs: list[TensorMeta], batch: int, steps: int) -> int:
        """The answer's bytes (an upper bound), refused over max_message_bytes."""
        longest_label = label_bytes(model.runtime.version.class_labels, model.runtime.arch.num_classes)
        size = answer_bytes(tuple(outputs), batch, steps, longest_label)
        per_step = [m.name for m in outputs if layout_of(m.name) is Layout.PER_STEP]
        check_answer_size(size, self.config.max_message_bytes, "send fewer rows per request", per_step)
        return size

    async def _run(self, call: InferCall) -> pb.ModelInferResponse:
        job = call.model.batcher.enqueue(call.sequences(), call.fetch)
        try:
            return call.response(await job.future)
        except asyncio.CancelledError:
            job.future.cancel()  # the caller went away: its sequences leave the queue
            raise

    async def _run_in_sequence(self, call: InferCall) -> pb.ModelInferResponse:
        """One request of a stateful sequence: in its turn, from the state the one before it left."""
        model = call.model
        turn = self.sequences.enter((model.name, model.version, call.control.id), call.control)
        try:
            await turn.wait()
            sequence = turn.sequence
            h0, c0 = (None if state is None else state[:, None] for state in (sequence.h, sequence.c))  # (L, 1, H)
            answers = await model.batcher.submit(replace(call.sequences(), h0=h0, c0=c0), call.fetch | PER_STATE)
            sequence.advance(answers.sequence(0))
        finally:
            turn.finish()
        return call.response(answers)


def check_finite_rows(x: np.ndarray, lengths: np.ndarray) -> None:
    """x (B, T, F) holds no NaN or Inf on its real steps (padding is never read)."""
    if not np.isfinite(x).all():
        check_finite_steps(Packed.from_padded(x, lengths).steps, "input 'x'", lengths, row="row")
