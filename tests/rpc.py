"""The one status assertion: a call fails with this gRPC status and a message naming these things.

It reads the failure whichever client raised it: grpc's RpcError (stubs, SeqserveClient) or
tritonclient's InferenceServerException (whose status is the code's name as text)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest
from tritonclient.utils import InferenceServerException


@dataclass
class Failure:
    """What the failed call reported, filled in when the block ends."""

    code: grpc.StatusCode | None = None
    details: str = ""


def status_of(error: BaseException) -> tuple[str, str]:
    """(the status code's name, the message) of a failed call."""
    if isinstance(error, grpc.RpcError):
        return error.code().name, error.details() or ""
    assert isinstance(error, InferenceServerException), error
    return (error.status() or "").removeprefix("StatusCode."), error.message() or ""


@contextmanager
def raises_status(code: grpc.StatusCode, *fragments: str) -> Iterator[Failure]:
    """The block must fail with `code` and a message holding every fragment."""
    failure = Failure()
    with pytest.raises((grpc.RpcError, InferenceServerException)) as caught:
        yield failure
    name, details = status_of(caught.value)
    assert name == code.name, (name, details)
    for fragment in fragments:
        assert fragment in details, (fragment, details)
    failure.code, failure.details = code, details
