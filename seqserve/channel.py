"""Channels to a seqserve server: plaintext, TLS or mutual TLS, with or without a bearer token.

Shared by the client library, the CLI, the batch script and the container health probe (which is
why this module needs nothing but grpcio).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
        return cls(*(Path(p) if p else None for p in (ca, cert, key)), token=token or None,
                   server_name=server_name or None)


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (plaintext or TLS alike)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=[*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def open_channel(target: str, security: Security = Security()) -> grpc.Channel:
    """A channel to `target`, with TLS and the bearer token if `security` asks for them."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
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


def add_security_args(parser: argparse.ArgumentParser, env: dict[str, str] | None = None) -> None:
    """--tls-ca, --tls-server-name, --client-cert, --client-key, --token-file, each with an env default."""
    env = os.environ if env is None else env
    group = parser.add_argument_group("connection security (for a server with --tls-* or --auth-token-file)")
    for name, (variable, help_text) in CLIENT_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), default=env.get(variable) or None,
                           help=f"{help_text} [env {variable}]")


def security_from_args(args: argparse.Namespace) -> Security:
    return Security.from_files(args.tls_ca, args.client_cert, args.client_key, args.token_file, args.tls_server_name)
