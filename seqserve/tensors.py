"""numpy <-> `seqserve.v1.Tensor`: raw little-endian float32 bytes plus a row-major shape."""

from __future__ import annotations

import math

import numpy as np

from seqserve.v1 import seqserve_pb2 as pb

FLOAT32_LE = np.dtype("<f4")


class TensorDecodeError(ValueError):
    """A Tensor message whose bytes do not match its shape; `field` names it in the request."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


def to_tensor(array: np.ndarray, out: pb.Tensor | None = None) -> pb.Tensor:
    """Encode an array (any float dtype) as a Tensor message; fills `out` in place when given."""
    array = np.ascontiguousarray(array, dtype=FLOAT32_LE)
    tensor = out if out is not None else pb.Tensor()
    tensor.shape[:] = array.shape
    tensor.data = array.tobytes()
    return tensor


def from_tensor(tensor: pb.Tensor, field: str = "tensor") -> np.ndarray:
    """Decode a Tensor message into a read-only float32 array (no copy)."""
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorDecodeError(field, f"negative dimension in shape {list(shape)}")
    expected = FLOAT32_LE.itemsize * math.prod(shape)
    if len(tensor.data) != expected:
        raise TensorDecodeError(
            field, f"{len(tensor.data)} bytes do not match shape {list(shape)} ({expected} bytes of float32)"
        )
    return np.frombuffer(tensor.data, dtype=FLOAT32_LE).reshape(shape)
