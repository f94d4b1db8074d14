"""`python -m server.healthcheck [--port N]`: exit 0 iff a seqserve server reports SERVING over grpc.health.v1.

The container health probe (Dockerfile HEALTHCHECK, docker-compose healthcheck). It imports only grpcio,
grpcio-health-checking and seqserve.channel, so it starts fast and never loads onnxruntime or torch. The port
defaults to SEQSERVE_PORT, the variable the server itself reads, so one setting moves both.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.channel import Security, add_security_args, open_channel, security_from_args

DEFAULT_PORT = 50051
DEFAULT_TIMEOUT_S = 3.0


def check(target: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S,
          security: Security | None = None) -> str:
    """The serving status of `service` ("" = the whole server) at `target`, by name, e.g. "SERVING"."""
    with open_channel(target, security or Security()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def build_parser(env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m server.healthcheck",
        description="Exit 0 iff the seqserve server answers SERVING to a grpc.health.v1 Check.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=int(env.get("SEQSERVE_PORT") or DEFAULT_PORT),
                        help="gRPC port [env SEQSERVE_PORT, default %(default)s]")
    parser.add_argument("--service", default="",
                        help='service to ask about; "" (default) is the server as a whole')
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds to wait for the answer (default: %(default)s)")
    add_security_args(parser, env)  # a TLS server: SEQSERVE_TLS_CA (+ SEQSERVE_CLIENT_CERT/KEY for mutual TLS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = f"{args.host}:{args.port}"
    try:
        status = check(target, args.service, args.timeout, security_from_args(args))
    except grpc.RpcError as exc:
        print(f"{target}: unhealthy: {exc.code().name} {exc.details() or ''}".rstrip(), file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"{target}: unhealthy: {status}", file=sys.stderr)
        return 1
    print(f"{target}: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
