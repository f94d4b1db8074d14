"""numpy <-> `seqserve.v1.Tensor`: raw little-endian float32 bytes plus a row-major shape."""

from __future__ import annotations

import math

import numpy as np

from seqserve.v1 import seqserve_pb2 as pb

FLOAT32_LE = np.dtype("<f4")
MAX_RANK = 8  # most dimensions a Tensor may have (seqserve's have at most 2)
# Most elements a shape may describe, zero dimensions left out: numpy refuses to reshape even an empty
# array to dimensions whose product passes its index range, and no message carries 2**40 floats.
MAX_ELEMENTS = 2**40


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
    """Decode a Tensor message into a read-only float32 array (no copy).

    Raises TensorDecodeError for a shape numpy could not hold (negative, too many or too large
    dimensions) or one the bytes do not match.
    """
    shape = tuple(tensor.shape)
    check_shape(shape, field)
    expected = FLOAT32_LE.itemsize * math.prod(shape)
    if len(tensor.data) != expected:
        raise TensorDecodeError(
            field, f"{len(tensor.data)} bytes do not match shape {list(shape)} ({expected} bytes of float32)"
        )
    return np.frombuffer(tensor.data, dtype=FLOAT32_LE).reshape(shape)


def check_shape(shape: tuple[int, ...], field: str = "tensor") -> None:
    """Raise TensorDecodeError unless `shape` has 0..MAX_RANK dimensions, none negative, describing at
    most MAX_ELEMENTS elements (zero dimensions left out). Messages show at most MAX_RANK dimensions."""
    if len(shape) > MAX_RANK:
        raise TensorDecodeError(field, f"shape has {len(shape)} dimensions, at most {MAX_RANK} are allowed")
    if any(d < 0 for d in shape):
        raise TensorDecodeError(field, f"negative dimension in shape {list(shape)}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise TensorDecodeError(field, f"shape {list(shape)} is too large (over 2**40 elements)")
