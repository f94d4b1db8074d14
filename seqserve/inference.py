"""The inference core: from raw (T, F) sequences to answers, written once.

Session options, padding, initial states, length grouping, the run, softmax and slicing live here
and nowhere else (softmax and the padding gather in seqserve.numerics, numpy only, so code that
never runs a model can use them without onnxruntime; the output-layout table in seqserve.outputs).
The server's batcher, the batch job (local backend and Ray actors), export's parity and int8 checks
and the bench all call these, on whole batches with numpy: nothing loops
over sequences in Python where a vector operation does the work.

Needs onnxruntime (the `serve` extra); never torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqserve.contract import Architecture, input_names, output_names
from seqserve.numerics import pad_rows, softmax, step_rows
from seqserve.outputs import PER_STATE as PER_STATE  # the output-layout table's sets, for the core's callers
from seqserve.outputs import PER_STEP as PER_STEP
from seqserve.outputs import Layout, layout_of

# Per-sequence answers: output name -> that sequence's slice (and "probabilities", the logits' softmax).
SequenceOutputs = dict[str, np.ndarray]


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    """How every seqserve session runs: `threads` intra-op threads, one graph at a time, all graph
    optimisations, and no spin-waiting pool threads between runs unless asked (spinning burns a core
    that the gRPC event loop or the batch job's reader needs: 44-59 % of the server's CPU, bench/PROFILE.md)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def open_session(model: str | Path | bytes, threads: int, spinning: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session on a model file (or its bytes)."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads, spinning), providers=["CPUExecutionProvider"])


def pad(sequences: Sequence[np.ndarray], features: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (T_i, F) sequences with zeros: x (B, T_max, F) float32 and lengths (B,) int64.

    One concatenation and one scatter, whatever the number of sequences.
    """
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))  # (B,)
    steps = np.concatenate(sequences) if len(sequences) else np.zeros((0, features), np.float32)  # (N, F)
    return pad_packed(steps, lengths)


def pad_packed(steps: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequences already packed end to end, steps (sum T_i, F) + lengths (B,), as x (B, T_max, F)."""
    return pad_rows(steps, np.cumsum(lengths) - lengths, lengths)


@dataclass(frozen=True)
class Batch:
    """One run's inputs."""

    x: np.ndarray  # (B, T, F) float32, right-padded
    lengths: np.ndarray  # (B,) int64
    h0: np.ndarray | None = None  # (L, B, H) streaming models; None: zeros
    c0: np.ndarray | None = None  # (L, B, H) streaming LSTM; None: zeros


class OnnxModel:
    """A model's session and its I/O contract: batches in, named outputs out.

    `small` = (n, session): batches of fewer than n sequences run on that session instead, e.g. a
    single-threaded one. The recurrent kernels synchronise their threads at every time step, and on
    small batches that costs more than a second thread gains (measured on 2 cores: one thread is
    1.2-1.7x faster at batch 1 to 8, two threads 1.1-1.4x faster from batch 16-32 up).
    """

    def __init__(self, session: ort.InferenceSession, arch: Architecture,
                 small: tuple[int, ort.InferenceSession] | None = None) -> None:
        self.session = session
        self.small = small
        self.arch = arch
        self.input_names = input_names(arch)
        self.output_names = output_names(arch)

    def feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        """Every input of the contract; states the batch leaves out start at zero."""
        feeds = {"x": batch.x, "lengths": batch.lengths}
        if self.arch.streaming:
            zeros = np.zeros((self.arch.num_layers, len(batch.lengths), self.arch.hidden_size), np.float32)  # (L, B, H)
            feeds["h0"] = zeros if batch.h0 is None else batch.h0
            if self.arch.has_cell_state:
                feeds["c0"] = zeros if batch.c0 is None else batch.c0
        return feeds

    def run(self, batch: Batch, fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The outputs named in `fetch` (default: all of the contract's), batch-shaped."""
        names = list(fetch or self.output_names)
        return dict(zip(names, self.session_for(len(batch.lengths)).run(names, self.feeds(batch)), strict=True))

    def session_for(self, batch_size: int) -> ort.InferenceSession:
        if self.small is not None and batch_size < self.small[0]:
            return self.small[1]
        return self.session


def length_groups(lengths: np.ndarray, max_size: int | None = None, max_waste: float = float("inf"),
                  max_padded_steps: int | None = None, min_split: int = 1) -> list[np.ndarray]:
    """Indices of sequences grouped into runs, shortest first: each group holds at most `max_size`
    sequences and `max_padded_steps` padded steps (B x T_max), and pads at most `max_waste` x its real
    steps unless that would cut off a group of fewer than `min_split` sequences (a small batch costs
    about as much per step as a bigger one: padding it away does not pay for another run). The one
    grouping policy of the server's batcher and the batch job."""
    order = np.argsort(lengths, kind="stable")  # (B,)
    sorted_steps = np.maximum(lengths[order], 1)  # (B,) a group's longest is its last
    if max_waste == float("inf") and (max_padded_steps is None or max_size is not None and len(order)
                                      and max_size * int(sorted_steps[-1]) <= max_padded_steps):
        step = max_size or max(1, len(order))  # only the size limit can bind: equal groups in order
        return [order[i : i + step] for i in range(0, len(order), step)]
    groups: list[np.ndarray] = []
    start, real = 0, 0
    for end, steps in enumerate(sorted_steps.tolist()):
        size = end - start + 1
        padded = steps * size  # sorted: this sequence is the group's longest
        if size > 1 and ((max_size is not None and size > max_size)
                         or (max_padded_steps is not None and padded > max_padded_steps)
                         or (size > min_split and padded > (1 + max_waste) * (real + steps))):
            groups.append(order[start:end])
            start, real = end, 0
        real += steps
    if start < len(order):
        groups.append(order[start:])
    return groups


def with_probabilities(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs plus `probabilities`, the logits' softmax, for the whole batch at once."""
    return {**outputs, "probabilities": softmax(outputs["logits"])}  # (B, C)


def per_sequence(outputs: dict[str, np.ndarray], lengths: np.ndarray) -> list[SequenceOutputs]:
    """Batch outputs cut into each sequence's own views (no copies), padding steps dropped."""
    cut = {name: _rows(name, value, lengths) for name, value in outputs.items()}
    return [{name: rows[i] for name, rows in cut.items()} for i in range(len(lengths))]


def _rows(name: str, value: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    layout = layout_of(name)
    if layout is Layout.PER_STEP:
        return [value[i, :length] for i, length in enumerate(lengths.tolist())]  # (T_i, ...)
    if layout is Layout.PER_STATE:
        return list(value.transpose(1, 0, 2))  # (L*D, H) each
    return list(value)  # (...) each


@dataclass(frozen=True)
class Packed:
    """Sequences end to end: steps (sum T_i, F) float32 and lengths (B,) int64, and for streaming models
    their initial states (L, B, H) (None: zeros). The form the batcher queues and the packed API carries."""

    steps: np.ndarray  # (N, F)
    lengths: np.ndarray  # (B,)
    h0: np.ndarray | None = None  # (L, B, H)
    c0: np.ndarray | None = None  # (L, B, H)

    @classmethod
    def of(cls, sequences: Sequence[np.ndarray], features: int, h0: np.ndarray | None = None,
           c0: np.ndarray | None = None) -> Packed:
        """(T_i, F) sequences joined end to end (one copy)."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))  # (B,)
        steps = np.concatenate(sequences) if len(sequences) > 1 else (
            sequences[0] if sequences else np.zeros((0, features), np.float32))  # (N, F)
        return cls(steps, lengths, h0, c0)

    @classmethod
    def one(cls, steps: np.ndarray, h0: np.ndarray | None = None, c0: np.ndarray | None = None) -> Packed:
        """A single (T, F) sequence, with its initial states (L, H) if it has any."""
        h0, c0 = (None if state is None else state[:, None] for state in (h0, c0))  # (L, 1, H)
        return cls(steps, np.array([len(steps)], dtype=np.int64), h0, c0)

    @classmethod
    def from_padded(cls, x: np.ndarray, lengths: np.ndarray, h0: np.ndarray | None = None,
                    c0: np.ndarray | None = None) -> Packed:
        """A right-padded x (B, T, F) without its padding (no copy when every row is T long)."""
        B, T, F = x.shape
        steps = x.reshape(B * T, F) if (lengths == T).all() else x[np.arange(T) < lengths[:, None]]  # (N, F)
        return cls(steps, lengths, h0, c0)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def starts(self) -> np.ndarray:
        """Where each sequence begins in `steps` (B,)."""
        return np.cumsum(self.lengths) - self.lengths


@dataclass(frozen=True)
class PackedOutputs:
    """Answers for packed sequences, batch first and padding dropped: per-step outputs (sum T_i, ...) end
    to end, states (B, L*D, H), the rest (B, ...), plus `probabilities` (B, C)."""

    arrays: dict[str, np.ndarray]
    lengths: np.ndarray  # (B,)

    def __len__(self) -> int:
        return len(self.lengths)

    def sequence(self, i: int) -> SequenceOutputs:
        """Sequence i's own answers (views)."""
        whole = len(self.lengths) == 1  # a request of one sequence: its per-step arrays are whole
        start = 0 if whole else int(self.lengths[:i].sum())
        steps = slice(None) if whole else slice(start, start + int(self.lengths[i]))
        return {name: value[steps] if layout_of(name) is Layout.PER_STEP else value[i]
                for name, value in self.arrays.items()}

    def padded(self, name: str, width: int | None = None) -> np.ndarray:
        """A per-step output as a right-padded batch (B, width, ...) (default width: the longest
        sequence), zeros on padding."""
        value = self.arrays[name]  # (N, ...)
        B, T = len(self.lengths), width or max(1, int(self.lengths.max(initial=0)))
        batch = np.zeros((B, T, *value.shape[1:]), dtype=value.dtype)  # (B, T, ...)
        packed_at, padded_at = step_rows(np.cumsum(self.lengths) - self.lengths, self.lengths, T)
        batch.reshape(B * T, *value.shape[1:])[padded_at] = value[packed_at]
        return batch
