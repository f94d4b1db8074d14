"""Domain errors of the service, and the one place that maps them to gRPC status codes.

A status message travels in a gRPC trailer, which a client refuses past its metadata limit (8-16 kB
by default). So a client's own string is never echoed whole: `excerpt` shows at most 64 printable
ASCII characters of it, and `status_of` caps the whole message at MAX_STATUS_CHARS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc

EXCERPT_CHARS = 64  # most characters of a client's string shown in an error message
MAX_STATUS_CHARS = 1024  # most characters of any status message
ELLIPSIS = "..."  # printable ASCII, like the rest of a status message


def excerpt(value: str | Sequence[object], limit: int = EXCERPT_CHARS) -> str:
    """A client's string (quoted) or list of values as it may appear in an error: printable ASCII, and
    when longer than `limit` characters, cut with an ellipsis and its original length.

    >>> excerpt("x" * 20000, limit=8)
    "'xxxxxxxx...' (20000 characters)"
    >>> excerpt(list(range(1000)), limit=16)
    '[0, 1, 2, 3, 4, ...] (1000 values)'
    """
    if not isinstance(value, str):
        return _values_excerpt(value, limit)
    shown = printable(value[:limit])
    if len(value) <= limit and len(shown) <= limit:
        return f"'{shown}'"
    return f"'{shown[:limit]}{ELLIPSIS}' ({len(value)} characters)"


def _values_excerpt(values: Sequence[object], limit: int) -> str:
    """`[v0, v1, ...]`, as many values as fit in `limit` characters."""
    shown: list[str] = []
    width = 2  # the brackets
    for value in values[:limit]:
        item = printable(str(value))
        if width + len(item) > limit:
            break
        shown.append(item)
        width += len(item) + 2
    if len(shown) == len(values):
        return "[" + ", ".join(shown) + "]"
    return "[" + ", ".join([*shown, ELLIPSIS]) + f"] ({len(values)} values)"


def printable(text: str) -> str:
    """`text` with every character that is not printable ASCII backslash-escaped (\\n, \\xe9, ...)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)


def bounded(message: str, limit: int = MAX_STATUS_CHARS) -> str:
    """A status message made printable ASCII and at most `limit` characters long."""
    shown = printable(message[:limit])
    if len(message) <= limit and len(shown) <= limit:
        return shown
    tail = f"{ELLIPSIS} ({len(message)} characters)"
    return shown[: limit - len(tail)] + tail


class ServingError(Exception):
    """Base class: every failure the service reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND

    @classmethod
    def no_model(cls, name: str, serving: Iterable[str]) -> ModelNotFound:
        known = ", ".join(serving) or "none"
        return cls(f"model: no model named {excerpt(name)} (serving: {known})")

    @classmethod
    def no_version(cls, name: str, version: int, serving: Iterable[int]) -> ModelNotFound:
        return cls(f"version: model {excerpt(name)} has no version {version} (serving: {sorted(serving)})")


class InvalidInput(ServingError):
    """A request field is malformed; the message starts with the field's path."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class LimitExceeded(ServingError):
    """A request is over one of the configured limits; the message names the limit (and what to do)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, field: str, value: int, limit: int, setting: str, hint: str = "") -> None:
        advice = f"; {hint}" if hint else ""
        super().__init__(f"{field}: {value} is over the limit of {limit} (server setting {setting}){advice}")
        self.field = field


class NotReady(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(ServingError):
    """The server is draining: the call should go to another replica, or to this one once restarted."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("server: shutting down; retry the call (another replica, or this one once restarted)")


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self) -> None:
        super().__init__("authorization: a valid `authorization: Bearer <token>` header is required")


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
    """The status code and message a client sees for `exc`; the message is bounded (see `bounded`)."""
    if isinstance(exc, ServingError):
        return exc.code, bounded(str(exc))
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
