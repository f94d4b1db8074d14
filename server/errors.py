"""Domain errors of the service, and the one place that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: every failure the service reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ServingError):
    """A request field is malformed; the message starts with the field's path."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class LimitExceeded(ServingError):
    """A request is over one of the configured limits; the message names the limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, field: str, value: int, limit: int, setting: str) -> None:
        super().__init__(f"{field}: {value} is over the limit of {limit} (server setting {setting})")
        self.field = field


class NotReady(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ServingError):
    """The request is well-formed but not valid in the stream's current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class StartupError(Exception):
    """The server cannot start as configured; the message names the setting to change."""

    def __init__(self, setting: str, value: object, problem: str) -> None:
        flag = "--" + setting.replace("_", "-")
        super().__init__(f"{flag} {value}: {problem} (set {flag} or SEQSERVE_{setting.upper()})")
        self.setting = setting


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for `exc`."""
    if isinstance(exc, ServingError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
