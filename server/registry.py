"""The models being served: every good version in the repository, each with its runtime and batcher."""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from seqserve.repository import ModelVersion, RepositoryError, scan_repository

from .batching import Batcher
from .config import ServerConfig
from .errors import ModelNotFound, NotReady
from .metrics import Metrics
from .runtime import ModelRuntime

log = logging.getLogger(__name__)


@dataclass(eq=False)  # one object per loaded version: compared and hashed by identity
class ServedModel:
    runtime: ModelRuntime
    batcher: Batcher

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def version(self) -> int:
        return self.runtime.number


class ModelRegistry:
    def __init__(self, config: ServerConfig, executor: Executor, metrics: Metrics,
                 lanes: Executor | None = None) -> None:
        self.config = config
        self.executor = executor
        self.lanes = lanes  # for the batchers' side-by-side calls (server.batching.Batcher)
        self.metrics = metrics
        self._models: dict[str, dict[int, ServedModel]] = {}
        self.problems: list[str] = []
        self.ready = False

    def load(self) -> None:
        """Load every model version. A broken one (files, metadata.json, onnxruntime session, warm-up run)
        and every folder the repository scan passes over are logged, recorded in `problems` and skipped."""
        versions, self.problems = scan_repository(self.config.model_repository)
        for version in versions:
            try:
                runtime = self._runtime(version)
            except RepositoryError as exc:
                self.problems.append(str(exc))
                continue
            batcher = Batcher(runtime, self.executor, self.metrics.for_model(version.name, version.version),
                              self.config.batch_policy, self.lanes)
            self._models.setdefault(version.name, {})[version.version] = ServedModel(runtime, batcher)
            log.info("model loaded", extra={"model": version.name, "version": version.version})
        for problem in self.problems:
            log.error("model skipped", extra={"problem": problem})
        self.metrics.models_loaded.set(sum(len(v) for v in self._models.values()))
        self.metrics.models_failed.set(len(self.problems))

    def _runtime(self, version: ModelVersion) -> ModelRuntime:
        """An onnxruntime session for `version`, warmed up if configured; raises RepositoryError."""
        runtime = ModelRuntime(version, self.config.threads, self.config.ort_spinning,
                               self.config.single_thread_below, self.config.run_threads)
        if self.config.warmup:
            runtime.warm_up()
        return runtime

    def start(self) -> None:
        for model in self.all():
            model.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for model in self.all():
            await model.batcher.stop()

    def all(self) -> list[ServedModel]:
        return [m for versions in self._models.values() for m in versions.values()]

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def get(self, name: str, version: int = 0) -> ServedModel:
        """The model `name` at `version` (0 = latest); raises ModelNotFound, or NotReady while loading."""
        if not self.ready:
            raise NotReady("server: models are still loading or the server is shutting down")
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound.no_model(name, self.names())
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound.no_version(name, version, versions)
        return versions[version]
