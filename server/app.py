"""Assemble and run the service: models, batchers, gRPC server, health, reflection, metrics.

Health: "" (the server), `seqserve.v1.SeqserveService` and `inference.GRPCInferenceService` are SERVING
once every model is loaded and warmed up; each model also has its own entry, `<model>/<version>` and
`<model>` (its latest version), which turns NOT_SERVING if that model's batcher dies. All turn
NOT_SERVING on shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seqserve.oip import grpc_service_pb2 as oip_pb
from seqserve.repository import RepositoryError
from seqserve.v1 import seqserve_pb2 as pb

from .admission import Admission
from .calls import CallAccounting
from .config import ServerConfig
from .errors import StartupError
from .metrics import Metrics
from .oip.plane import InferencePlane
from .oip.service import SERVICE_NAME as OIP_SERVICE_NAME
from .oip.service import InferenceService, add_inference_service
from .reflection import enable_reflection
from .registry import ModelRegistry, ServedModel
from .streams import ByteBudget, StreamBounds
from .v1.dataplane import DataPlane
from .v1.service import SeqserveService, add_service
from .wire import RateLimitedLog, guard
from .wire import log as wire_log

log = logging.getLogger(__name__)
# After draining: time for calls that raced the drain (answered UNAVAILABLE) and health watches to close.
SOCKET_CLOSE_GRACE_S = 0.5
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SeqserveService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SeqserveServer:
    """A running seqserve instance. `await start()`, then `await stop()` (graceful)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=config.batch_runs,
                                           thread_name_prefix="inference")
        # A big call's parts, one per thread, side by side (--parallel-call-min); the event loop awaits them.
        self.lanes = ThreadPoolExecutor(max_workers=max(1, config.threads), thread_name_prefix="inference-lane")
        self.registry = ModelRegistry(config, self.executor, self.metrics, self.lanes)
        self.health = health.aio.HealthServicer()
        decode_log = RateLimitedLog(wire_log)
        self.admission = Admission(read_token(config), functools.partial(guard, metrics=self.metrics,
                                                                         decode_log=decode_log),
                                   replica=config.replica)
        self._decode_log = decode_log
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", int(config.reuse_port)),
            *((("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),)
              if config.max_connection_age_s > 0 else ()),
        ]
        # Timing, counting and status codes of both APIs' calls, and one stream count for both.
        self.accounting = CallAccounting(self.metrics, config, (SERVICE_NAME, OIP_SERVICE_NAME))
        self.unsent = ByteBudget(config.max_process_unsent_bytes, self.metrics.stream_unsent_bytes)
        self.grpc = grpc.aio.server(options=options, interceptors=[self.admission, self.accounting],
                                    maximum_concurrent_rpcs=config.max_concurrent_rpcs)
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        """Bind, load and warm up every model, then report SERVING; returns the gRPC port.

        Raises StartupError, with everything started so far stopped again, when the server cannot
        run as configured.
        """
        try:
            return await self._start()
        except StartupError:
            await self.grpc.stop(None)
            self.metrics.shutdown()
            self._stop_threads()
            raise

    async def _start(self) -> int:
        await self._set_health(NOT_SERVING)
        bounds = StreamBounds(self.config.max_stream_in_flight, self.config.max_stream_unsent_bytes, self.unsent)
        add_service(  # the generated registration, with request deserializers that never raise (server/wire.py)
            SeqserveService(DataPlane(self.registry, self.config), bounds), self.grpc, self.metrics, self._decode_log,
        )
        add_inference_service(  # the Open Inference Protocol (KServe v2) on the same port and batchers
            InferenceService(InferencePlane(self.registry, self.config, self.metrics), bounds), self.grpc,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if self.config.reflection:
            enable_reflection((SERVICE_NAME, OIP_SERVICE_NAME, health.SERVICE_NAME),
                              (pb.DESCRIPTOR, oip_pb.DESCRIPTOR, health_pb2.DESCRIPTOR), self.grpc)
        self.port = self._bind_grpc()
        await self.grpc.start()
        if self.config.metrics_port:
            self.metrics_port = self._serve_metrics()
        await asyncio.get_running_loop().run_in_executor(None, self._load_models)
        self.registry.start()
        for model in self.registry.all():
            model.batcher.on_failure = lambda exc, model=model: asyncio.ensure_future(self._model_failed(model))
            await self._set_model_health(model, SERVING)
        await self._set_health(SERVING)
        log.info("serving", extra={"port": self.port, "metrics_port": self.metrics_port,
                                   "tls": bool(self.config.tls_cert),
                                   "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                                   "models": [f"{m.name}/{m.version}" for m in self.registry.all()],
                                   "skipped": len(self.registry.problems)})
        return self.port

    def _load_models(self) -> None:
        repository = self.config.model_repository
        try:
            self.registry.load()
        except RepositoryError as exc:
            raise StartupError("model_repository", repository, str(exc)) from None
        if not self.registry.all() and not self.config.allow_empty:
            raise StartupError("model_repository", repository,
                               f"no loadable model ({len(self.registry.problems)} skipped, each named in the "
                               "log); --allow-empty starts without models")

    def _bind_grpc(self) -> int:
        address = f"{self.config.host}:{self.config.port}"
        credentials = server_credentials(self.config)
        try:
            if credentials is None:
                return self.grpc.add_insecure_port(address)
            return self.grpc.add_secure_port(address, credentials)
        except RuntimeError:
            raise StartupError("port", self.config.port, f"cannot listen on {address}: the port is in use "
                                                         "or the address is not this machine's") from None

    def _serve_metrics(self) -> int:
        try:
            return self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        except OSError as exc:
            raise StartupError("metrics_port", self.config.metrics_port,
                               f"cannot serve metrics: {exc.strerror or exc}; 0 turns metrics off") from None

    async def _set_health(self, status: int) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)
        await self.health.set(OIP_SERVICE_NAME, status)

    async def _set_model_health(self, model: ServedModel, status: int) -> None:
        await self.health.set(f"{model.name}/{model.version}", status)
        if model.version == max(self.registry.versions(model.name)):
            await self.health.set(model.name, status)

    async def _model_failed(self, model: ServedModel) -> None:
        await self._set_model_health(model, NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Turn new calls away (UNAVAILABLE), let in-flight ones finish (up to `grace` s), drain the batchers."""
        grace = self.config.grace_seconds if grace is None else grace
        log.info("shutting down", extra={"grace_seconds": grace})
        await self.health.enter_graceful_shutdown()
        started = time.monotonic()
        finished = await self.admission.drain(grace)
        # Calls that raced the signal (sent before the client saw NOT_SERVING) still get a clean
        # UNAVAILABLE from the interceptor, not a CANCELLED from gRPC core's shutdown.
        await asyncio.sleep(max(0.0, min(grace, self.config.drain_seconds) - (time.monotonic() - started)))
        if not finished:
            log.warning("grace period over; cancelling the calls still running",
                        extra={"in_flight": self.admission.in_flight})
        await self.grpc.stop(SOCKET_CLOSE_GRACE_S)
        await self.registry.stop()
        self._stop_threads()
        log.info("stopped")

    def _stop_threads(self) -> None:
        for executor in (self.executor, self.lanes):
            executor.shutdown(wait=True)

    async def wait(self) -> None:
        await self.grpc.wait_for_termination()


def _read_setting_file(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(setting, path, f"cannot read it: {exc.strerror or exc}") from None


def read_token(config: ServerConfig) -> str | None:
    """The bearer token calls must present, or None when auth is off."""
    if not config.auth_token_file:
        return None
    token = _read_setting_file("auth_token_file", config.auth_token_file).decode().strip()
    if not token:
        raise StartupError("auth_token_file", config.auth_token_file, "the file is empty")
    return token


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port (mutual TLS with a client CA), or None for plaintext."""
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise StartupError("tls_client_ca", config.tls_client_ca, "mutual TLS needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        missing = "tls_key" if config.tls_cert else "tls_cert"
        raise StartupError(missing, "''", "TLS needs both --tls-cert and --tls-key")
    key = _read_setting_file("tls_key", config.tls_key)
    chain = _read_setting_file("tls_cert", config.tls_cert)
    client_ca = _read_setting_file("tls_client_ca", config.tls_client_ca) if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)
