"""Assemble and run the service: models, batchers, gRPC server, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve.repository import RepositoryError
from server.config import ServerConfig
from server.dataplane import DataPlane
from server.errors import StartupError
from server.metrics import Metrics
from server.reflection import enable_reflection
from server.registry import ModelRegistry
from server.service import SeqserveService

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SeqserveService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SeqserveServer:
    """A running seqserve instance. `await start()`, then `await stop()` (graceful)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.registry = ModelRegistry(config, self.executor, self.metrics)
        self.health = health.aio.HealthServicer()
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.grpc = grpc.aio.server(options=options)
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
            self.executor.shutdown(wait=True)
            raise

    async def _start(self) -> int:
        await self._set_health(NOT_SERVING)
        pb_grpc.add_SeqserveServiceServicer_to_server(
            SeqserveService(DataPlane(self.registry, self.config), self.metrics, self.config), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), self.grpc)
        self.port = self._bind_grpc()
        await self.grpc.start()
        if self.config.metrics_port:
            self.metrics_port = self._serve_metrics()
        await asyncio.get_running_loop().run_in_executor(None, self._load_models)
        self.registry.start()
        await self._set_health(SERVING)
        log.info("serving", extra={"port": self.port, "metrics_port": self.metrics_port,
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
        try:
            return self.grpc.add_insecure_port(address)
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

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish (up to `grace` s), drain the batchers."""
        grace = self.config.grace_seconds if grace is None else grace
        log.info("shutting down", extra={"grace_seconds": grace})
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)
        await self.registry.stop()
        self.executor.shutdown(wait=True)
        log.info("stopped")

    async def wait(self) -> None:
        await self.grpc.wait_for_termination()
