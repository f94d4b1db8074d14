"""Channels to a seqserve server: plaintext, TLS or mutual TLS, with or without a bearer token, and
gRPC's own load balancing, retries and keepalive.

A target is anything gRPC resolves: `host:port`, `dns:///seqserve:50051` (every address the name
resolves to, e.g. a Kubernetes headless Service or a Compose service scaled to N replicas),
`ipv4:10.0.0.1:50051,10.0.0.2:50051`. The channel's service config balances calls `round_robin` over
all of them and retries a call that fails UNAVAILABLE before any answer came back (a replica that is
draining, restarting or dead) with exponential backoff, on whichever replica is up; keepalive pings
notice a replica that vanished without closing its connections.

Shared by the client library, the CLI, the batch script and the container health probe (which is
why this module needs nothing but grpcio).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE = "seqserve.v1.SeqserveService"
# gRPC caps retryPolicy.maxAttempts at 5, the first attempt included (gRFC A6; grpc core clamps a higher
# value to 5 and logs it; no channel argument raises the cap), so at most 4 retries.
MAX_ATTEMPTS = 5
MAX_RETRIES = MAX_ATTEMPTS - 1
# Keepalive, while calls are open: a ping after 30 s, and a connection whose ping is unanswered for 10 s
# is dead, so a call to a replica that vanished without a FIN/RST (a node lost, a network partition)
# fails UNAVAILABLE, and is retried elsewhere, within ~40 s instead of the kernel's TCP timeout (minutes
# to hours). No pings on idle connections, and gRPC sends at most two pings without data in between
# (grpc.http2.max_pings_without_data), so a server with gRPC's default policy (one ping per 5 minutes,
# two strikes) never closes the connection for too many pings (measured: a stream idle for 8 s under
# a 1 s keepalive stays open).
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Retries:
    """gRPC's retries of a seqserve call that fails UNAVAILABLE before any answer came back.

    `retries`: attempts beyond the first, 0 to MAX_RETRIES. Retry n waits about
    min(initial_backoff_s * multiplier**(n-1), max_backoff_s) first (gRPC jitters it). Only
    UNAVAILABLE is retried: every other code is the same on any replica (a bad request, a limit).
    A call is retried only while gRPC still holds what it sent (`per_rpc_retry_buffer_size`, set to
    the largest message below) and before the first answer arrived, so a stream is never replayed
    past what the client has seen.

    The defaults wait ~0.75 s in all (0.05 + 0.1 + 0.2 + 0.4): with replicas, a retry finds another
    at once, and with none up a client hears UNAVAILABLE within a second (measured: 0.7 s).
    """

    retries: int = MAX_RETRIES
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ValueError(f"retries must be within 0..{MAX_RETRIES} (gRPC caps a call at {MAX_ATTEMPTS} "
                             f"attempts), got {self.retries}")

    def policy(self) -> dict | None:
        """The service config's retryPolicy, or None for no retries (gRPC needs maxAttempts >= 2)."""
        if self.retries == 0:
            return None
        return {"maxAttempts": self.retries + 1, "initialBackoff": f"{self.initial_backoff_s}s",
                "maxBackoff": f"{self.max_backoff_s}s", "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"]}


def service_config(retries: Retries = Retries()) -> str:
    """The channel's gRPC service config (JSON): round_robin over every resolved address, and the
    retry policy on seqserve's own methods (not on health checks: a probe reports what it sees)."""
    method: dict = {"name": [{"service": SERVICE}]}
    policy = retries.policy()
    if policy is not None:
        method["retryPolicy"] = policy
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]})


@dataclass(frozen=True)
class Security:
    """How to reach a server that uses TLS and/or a bearer token (all optional; none = plaintext).

    `ca`: PEM roots to verify the server with (TLS with the system roots if only cert/key are given);
    `cert` + `key`: this client's certificate, for servers that require mutual TLS; `token`: sent as
    `authorization: Bearer <token>` on every call.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None
    server_name: str | None = None  # the name to verify the server's certificate against, if not the target's

    @property
    def tls(self) -> bool:
        return any((self.ca, self.cert, self.key))

    @classmethod
    def from_files(cls, ca: str | None = None, cert: str | None = None, key: str | None = None,
                   token_file: str | None = None, server_name: str | None = None) -> Security:
        token = Path(token_file).read_text().strip() if token_file else None
        return cls(ca=_optional_path(ca), cert=_optional_path(cert), key=_optional_path(key), token=token or None,
                   server_name=server_name or None)


def _optional_path(path: str | None) -> Path | None:
    return Path(path) if path else None


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    """A call's details as an interceptor passes them on (grpc's own is a private namedtuple)."""

    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (plaintext or TLS alike)."""

    def __init__(self, token: str) -> None:
        self.header: tuple[str, str | bytes] = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, (*(details.metadata or ()), self.header),
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def channel_options(retries: Retries = Retries()) -> list[tuple[str, int | str]]:
    """Message limits, the service config, retry buffering and keepalive for a channel."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.service_config", service_config(retries)),
        # Ours, not one a DNS TXT record could substitute.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", int(retries.retries > 0)),
        # A request is retried only while gRPC buffers it (default 256 KiB): every request the server accepts.
        ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


def open_channel(target: str, security: Security = Security(), retries: Retries = Retries()) -> grpc.Channel:
    """A channel to `target` (any gRPC target: host:port, dns:///name:port, ...), balanced round_robin over
    its addresses, retrying UNAVAILABLE as `retries` says, with TLS and the bearer token if `security`
    asks for them."""
    options = channel_options(retries)
    if security.tls:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(read(security.ca), read(security.key), read(security.cert))
        if security.server_name:
            options.append(("grpc.ssl_target_name_override", security.server_name))
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if security.token:
        channel = grpc.intercept_channel(channel, _BearerToken(security.token))
    return channel


# Client flags and their environment variables (distinct from the server's SEQSERVE_TLS_CERT/KEY, so
# one environment, a container's, can hold both).
CLIENT_FLAGS = {
    "tls_ca": ("SEQSERVE_TLS_CA", "PEM roots to verify the server's certificate (turns TLS on)"),
    "tls_server_name": ("SEQSERVE_TLS_SERVER_NAME", "name the server's certificate must carry, if not the host's"),
    "client_cert": ("SEQSERVE_CLIENT_CERT", "this client's PEM certificate, for mutual TLS"),
    "client_key": ("SEQSERVE_CLIENT_KEY", "this client's PEM private key, for mutual TLS"),
    "token_file": ("SEQSERVE_TOKEN_FILE", "file holding the bearer token to send"),
}


def add_security_args(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """--tls-ca, --tls-server-name, --client-cert, --client-key, --token-file, each with an env default."""
    variables = os.environ if env is None else env
    group = parser.add_argument_group("connection security (for a server with --tls-* or --auth-token-file)")
    for name, (variable, help_text) in CLIENT_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), default=variables.get(variable) or None,
                           help=f"{help_text} [env {variable}]")


def security_from_args(args: argparse.Namespace) -> Security:
    return Security.from_files(args.tls_ca, args.client_cert, args.client_key, args.token_file, args.tls_server_name)
