"""The model I/O contract: the tensor names, dtypes and shapes every exported model has.

The exporter, the server, the batch job and the tests all derive the contract from here,
given a model's architecture (the `architecture` block of its metadata.json).

Symbolic dimensions are the strings "batch", "time" and "frames"; the rest are fixed by the architecture.
A model with a strided input stage runs its recurrent layers over frames, not steps: its per-step
outputs have a "frames" axis, ceil(length / conv_stride) real frames per row (`frame_lengths`).

Tasks: a classifier outputs `logits (batch, classes)`; a regressor outputs `prediction (batch, targets)`
in the targets' own units instead.

The annotations are the schema seqserve.metadata checks metadata.json against: `Literal` fields
accept only the listed values, and a field's `metadata` may bound it ({"min": .., "max": ..}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

BATCH, TIME, FRAMES = "batch", "time", "frames"
Dim = int | str
DType = Literal["float32", "int64"]  # numpy dtype names
Cell = Literal["rnn", "lstm", "gru"]
Attention = Literal["additive", "none"]
Task = Literal["classify", "regress"]
InputStage = Literal["none", "conv"]
INT32_MAX = 2**31 - 1
SIZE = {"min": 1, "max": INT32_MAX}  # a width or count: positive, and within the int32 fields of ModelInfo
COUNT32 = {"min": 0, "max": INT32_MAX}  # a count that is 0 where it does not apply (classes of a regressor)
OMIT_DEFAULT = {"omit_default": True}  # metadata.json leaves the field out at its default (files made before it)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: DType
    shape: tuple[Dim, ...]
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "description": self.description}


@dataclass(frozen=True)
class Architecture:
    """The fields of an encoder's config that decide its I/O contract."""

    cell: Cell
    input_size: int = field(metadata=SIZE)
    hidden_size: int = field(metadata=SIZE)
    num_layers: int = field(metadata=SIZE)
    bidirectional: bool
    attention: Attention
    num_classes: int = field(metadata=COUNT32)  # 0 for a regressor
    step_logits: bool = False
    task: Task = field(default="classify", metadata=OMIT_DEFAULT)
    num_targets: int = field(default=0, metadata=COUNT32 | OMIT_DEFAULT)  # 0 for a classifier
    input_stage: InputStage = field(default="none", metadata=OMIT_DEFAULT)
    conv_stride: int = field(default=1, metadata=SIZE | OMIT_DEFAULT)  # steps per frame of the input stage

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> Architecture:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def streaming(self) -> bool:
        """Unidirectional models without an input stage take an initial state, so a sequence can continue
        chunk by chunk (a strided input stage would need the steps of the next chunk)."""
        return not self.bidirectional and self.input_stage == "none"

    @property
    def regression(self) -> bool:
        return self.task == "regress"

    @property
    def step_axis(self) -> str:
        """The symbolic name of the per-step outputs' second axis: input steps, or frames of the input stage."""
        return TIME if self.input_stage == "none" else FRAMES

    @property
    def has_cell_state(self) -> bool:
        return self.cell == "lstm"

    @property
    def has_attention(self) -> bool:
        return self.attention != "none"


def input_specs(a: Architecture) -> list[TensorSpec]:
    specs = [
        TensorSpec("x", "float32", (BATCH, TIME, a.input_size), "raw features, right-padded"),
        TensorSpec("lengths", "int64", (BATCH,), "real length of each row"),
    ]
    state_shape = (a.num_layers, BATCH, a.hidden_size)
    if a.streaming:
        specs.append(TensorSpec("h0", "float32", state_shape, "initial hidden state (zeros to start)"))
        if a.has_cell_state:
            specs.append(TensorSpec("c0", "float32", state_shape, "initial cell state (zeros to start)"))
    return specs


def frame_lengths(a: Architecture, lengths: Any) -> Any:
    """The real length of each row of the per-step outputs (ints or integer arrays): ceil(length / conv_stride)
    frames with an input stage, else the lengths themselves."""
    # (n + s - 1) // s: non-negative operands, so a truncating division (ONNX Div on integers) is a floor too
    return (lengths + a.conv_stride - 1) // a.conv_stride if a.input_stage != "none" else lengths


def output_specs(a: Architecture) -> list[TensorSpec]:
    width = a.directions * a.hidden_size
    state_shape = (a.num_layers * a.directions, BATCH, a.hidden_size)
    steps = a.step_axis
    per_frame = "" if steps == TIME else f" (a frame per {a.conv_stride} steps of x: ceil(length / {a.conv_stride}))"
    specs = [
        TensorSpec("outputs", "float32", (BATCH, steps, width),
                   f"last layer's per-step outputs{per_frame}, 0 on padding; [..., :H] forward, [..., H:] backward"),
        TensorSpec("h_n", "float32", state_shape,
                   "final hidden state per layer and direction; h_n[-2], h_n[-1] the last layer's two"),
    ]
    if a.has_cell_state:
        specs.append(TensorSpec("c_n", "float32", state_shape, "final cell state per layer and direction"))
    if a.has_attention:
        specs += [
            TensorSpec("context", "float32", (BATCH, width), "attention-weighted sum of outputs"),
            TensorSpec("attention", "float32", (BATCH, steps), "attention weights, rows sum to 1, 0 on padding"),
        ]
    if a.regression:
        specs.append(TensorSpec("prediction", "float32", (BATCH, a.num_targets), "predicted targets, in their units"))
    else:
        specs.append(TensorSpec("logits", "float32", (BATCH, a.num_classes), "class scores"))
    if a.step_logits:
        specs.append(TensorSpec("step_logits", "float32", (BATCH, TIME, a.num_classes),
                                "running prediction after each step, 0 on padding"))
    return specs


def input_names(a: Architecture) -> list[str]:
    return [s.name for s in input_specs(a)]


def output_names(a: Architecture) -> list[str]:
    return [s.name for s in output_specs(a)]


def dynamic_axes(a: Architecture) -> dict[str, dict[int, str]]:
    """The symbolic dimensions of every input and output, as torch.onnx.export wants them."""
    return {
        s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
        for s in input_specs(a) + output_specs(a)
    }
