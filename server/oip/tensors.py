"""A model as the Open Inference Protocol sees it, and its tensors on that wire.

A model's v2 view is its ONNX contract as it is (seqserve.contract): inputs `x` FP32 [-1, -1, F],
`lengths` INT64 [-1], and for unidirectional models `h0`/`c0` FP32 [L, -1, H]; outputs as exported
(`outputs`, `h_n`, `c_n`, `context`, `attention`, `logits`, `step_logits`), plus `probabilities`
FP32 [-1, C] and `label` BYTES [-1] (the class name).

Inputs arrive in `raw_input_contents` (little-endian, row-major) or in typed `contents`; each is
checked against its datatype, shape and byte count, and a bad one is named (`input 'x': ...`).
Answers always travel in `raw_output_contents`, the only form tritonclient decodes.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from seqserve.contract import BATCH, TIME, Architecture, Dim, input_specs, output_specs
from seqserve.oip import grpc_service_pb2 as pb
from seqserve.tensors import TensorDecodeError, check_shape

from ..errors import InvalidInput, excerpt
from ..validation import ENVELOPE_BYTES, FIELD_BYTES

PLATFORM = "onnxruntime_onnx"  # Triton's name for what serves these models
DATATYPES = {"float32": "FP32", "int64": "INT64"}  # the contract's numpy dtype -> v2 datatype
NUMPY = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}  # v2 datatype -> little-endian numpy dtype
TYPED_CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents"}  # InferTensorContents field per datatype
BYTES = "BYTES"
LENGTH_PREFIX = struct.Struct("<I")  # a BYTES element: its length (4 bytes, little-endian), then its bytes


@dataclass(frozen=True)
class TensorMeta:
    """One input or output of a model on the v2 wire."""

    name: str
    datatype: str
    shape: tuple[Dim, ...]  # the contract's: "batch", "time" or a size

    @property
    def wire_shape(self) -> list[int]:
        """The shape ModelMetadata lists: -1 for a dimension of any size."""
        return [d if isinstance(d, int) else -1 for d in self.shape]

    def metadata(self) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(name=self.name, datatype=self.datatype, shape=self.wire_shape)


@functools.cache
def model_inputs(arch: Architecture) -> dict[str, TensorMeta]:
    return {s.name: TensorMeta(s.name, DATATYPES[s.dtype], s.shape) for s in input_specs(arch)}


@functools.cache
def model_outputs(arch: Architecture) -> dict[str, TensorMeta]:
    """The exported outputs, then `probabilities` and `label` (the default answer, in this order)."""
    outputs = {s.name: TensorMeta(s.name, DATATYPES[s.dtype], s.shape) for s in output_specs(arch)}
    outputs["probabilities"] = TensorMeta("probabilities", "FP32", (BATCH, arch.num_classes))
    outputs["label"] = TensorMeta("label", BYTES, (BATCH,))
    return outputs


def decode_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, meta: TensorMeta) -> np.ndarray:
    """One input as a read-only array: datatype, rank, fixed dimensions and byte count checked."""
    field = f"input {meta.name!r}"
    if tensor.datatype != meta.datatype:
        raise InvalidInput(field, f"datatype {excerpt(tensor.datatype)}, the model expects {meta.datatype}")
    shape = tuple(tensor.shape)
    try:
        check_shape(shape, field)
    except TensorDecodeError as exc:
        raise InvalidInput(exc.field, exc.detail) from None
    if len(shape) != len(meta.shape) or any(isinstance(d, int) and d != n
                                            for d, n in zip(meta.shape, shape, strict=True)):
        raise InvalidInput(field, f"shape {list(shape)} does not fit {meta.wire_shape}")
    dtype, count = NUMPY[meta.datatype], math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(field, "data both in contents and in raw_input_contents; send it once")
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(field, f"{len(raw)} bytes of raw_input_contents do not match shape {list(shape)} "
                                      f"({count * dtype.itemsize} bytes of {meta.datatype})")
        return np.frombuffer(raw, dtype).reshape(shape)
    contents_field = TYPED_CONTENTS[meta.datatype]
    values = getattr(tensor.contents, contents_field)
    if len(values) != count:
        raise InvalidInput(field, f"{len(values)} values in contents.{contents_field} do not match shape "
                                  f"{list(shape)} ({count} values)")
    array = np.array(values, dtype)
    array.flags.writeable = False
    return array.reshape(shape)


def decode_inputs(request: pb.ModelInferRequest, metas: dict[str, TensorMeta]) -> dict[str, np.ndarray]:
    """Every input of a request by name: no unknown or repeated names, and raw contents (when used)
    one per input."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput("raw_input_contents", f"{len(raw)} entries for {len(request.inputs)} inputs "
                                                 "(one per input, in the order of `inputs`)")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        meta = metas.get(tensor.name)
        if meta is None:
            raise InvalidInput(f"inputs[{i}]", f"the model has no input {excerpt(tensor.name)} "
                                               f"(inputs: {', '.join(metas)})")
        if tensor.name in arrays:
            raise InvalidInput(f"inputs[{i}]", f"input {tensor.name!r} given twice")
        arrays[tensor.name] = decode_input(tensor, raw[i] if raw else None, meta)
    return arrays


def answer(metas: Sequence[TensorMeta], values: Sequence[np.ndarray], **fields: str) -> pb.ModelInferResponse:
    """A ModelInferResponse with `fields` (model_name, model_version, id) carrying `values` as the outputs
    `metas`: each one's name, datatype and shape in `outputs`, its data in `raw_output_contents`."""
    return pb.ModelInferResponse(
        **fields,
        outputs=[{"name": m.name, "datatype": m.datatype, "shape": v.shape}
                 for m, v in zip(metas, values, strict=True)],
        raw_output_contents=[raw_contents(m, v) for m, v in zip(metas, values, strict=True)],
    )


def raw_contents(meta: TensorMeta, value: np.ndarray) -> bytes:
    """A tensor's raw data: little-endian, row-major (BYTES: see serialize_bytes)."""
    if meta.datatype == BYTES:
        return serialize_bytes(value.reshape(-1).tolist())
    return value.astype(NUMPY[meta.datatype], copy=False).tobytes()


def serialize_bytes(elements: Iterable[str]) -> bytes:
    """BYTES data: each element as its UTF-8 length (4 bytes, little-endian), then its UTF-8 bytes."""
    encoded = [e.encode() for e in elements]
    return b"".join(LENGTH_PREFIX.pack(len(e)) + e for e in encoded)


def answer_bytes(outputs: tuple[TensorMeta, ...], batch: int, time: int, longest_label: int) -> int:
    """The most bytes an answer with `outputs` for `batch` rows of `time` steps takes, known before anything
    runs: fixed + batch x per row + batch x time x per step (every output has one batch dimension)."""
    fixed, per_row, per_step = answer_layout(outputs, longest_label)
    return fixed + batch * per_row + batch * time * per_step


@functools.lru_cache(maxsize=1024)
def answer_layout(outputs: tuple[TensorMeta, ...], longest_label: int) -> tuple[int, int, int]:
    """(fixed, per row, per row and step) bytes of an answer: each tensor's data and shape (up to 10 bytes a
    dimension), the headers of its message, name, datatype, shape and data fields, and the envelope."""
    fixed, per_row, per_step = ENVELOPE_BYTES, 0, 0
    for meta in outputs:
        fixed += 5 * FIELD_BYTES + len(meta.name) + len(meta.datatype) + 10 * len(meta.shape)
        if meta.datatype == BYTES:
            per_row += LENGTH_PREFIX.size + longest_label
            continue
        element = NUMPY[meta.datatype].itemsize * math.prod(d for d in meta.shape if isinstance(d, int))
        if TIME in meta.shape:
            per_step += element
        else:
            per_row += element
    return fixed, per_row, per_step
