"""Real seqserve servers for tests, bound to 127.0.0.1 on free ports: `threaded_server` (in a background
thread of this process) or `ServerProcess` (`python -m seqserve.server` in a subprocess). Tests get their
servers here and nowhere else."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from bench.procs import free_port as free_port  # the one free-port helper, shared with the bench
from seqserve.server.app import SeqserveServer
from seqserve.server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
T = TypeVar("T")


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def assert_reading_held(server: ThreadedServer, method: str, in_flight: int, answers: Iterator, sent: int) -> None:
    """A stream whose client reads no answers: the server has read (and answered) at most about
    `in_flight` of the `sent` requests, and reads the rest once the client reads its answers."""
    wait_until(lambda: server.requests(method, "OK") >= in_flight)
    time.sleep(1.0)  # time to read more, were it not held back
    held = server.requests(method, "OK")
    assert held <= in_flight + 2, f"read {held} of {sent} requests while the client read no answer"
    assert len(list(answers)) == sent  # reading resumes as the client reads


def versioned_repository(folder: Path, model: str, versions: tuple[int, ...]) -> Path:
    """A repository in `folder` holding `model` (the committed one's files) under each of `versions`:
    the same model, only the number differs."""
    for version in versions:
        target = folder / model / str(version)
        target.mkdir(parents=True)
        for name in ("model.onnx", "metadata.json"):
            shutil.copy(REPOSITORY / model / "1" / name, target / name)
    return folder


class ThreadedServer:
    """A SeqserveServer on its own event loop in a daemon thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: SeqserveServer | None = None
        self.starting: Future | None = None  # the server's start, once begun
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the server's loop; its result comes in the future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return self.submit(coro).result(timeout)

    def sync(self, fn: Callable[[], T]) -> T:
        """Call a plain function on the server's loop (its asyncio objects are not thread-safe)."""

        async def run() -> T:
            return fn()

        return self.call(run())

    def requests(self, method: str, code: str) -> float:
        """How many calls (stream messages) of `method` the server has answered with `code`."""
        labels = {"method": method, "code": code}
        return self.server.metrics.registry.get_sample_value("seqserve_requests_total", labels) or 0.0

    def begin(self) -> ThreadedServer:
        """Create the server and begin starting it (bind, load the models); `starting` completes when done."""
        self._thread.start()

        async def create() -> SeqserveServer:
            return SeqserveServer(self.config)

        self.server = self.call(create())
        self.starting = self.submit(self.server.start())
        return self

    def start(self, timeout: float = 60.0) -> ThreadedServer:
        self.begin().starting.result(timeout)
        return self

    def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@contextmanager
def threaded_server(repository: Path = REPOSITORY, ready: bool = True, **settings) -> Iterator[ThreadedServer]:
    """A server in a thread with `settings` over the defaults; ready (models loaded), or with `ready=False`
    still starting (its `starting` future completes once it is)."""
    config = replace(ServerConfig(), model_repository=Path(repository), host="127.0.0.1", port=0,
                     metrics_port=0, **settings)
    server = ThreadedServer(config)
    if ready:
        server.start()
    else:
        server.begin()
    try:
        yield server
    finally:
        server.stop()


class ServerProcess:
    """`python -m server` in a subprocess; the port is read from its "serving" log line."""

    def __init__(self, repository: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seqserve.server", "--model-repository", str(repository), "--host", "127.0.0.1",
             "--port", "0", "--metrics-port", "0", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
        self.logs: list[dict] = []
        self.port = self.wait_for_log("serving")["port"]
        self.target = f"127.0.0.1:{self.port}"

    def wait_for_log(self, message: str, timeout: float = 60.0) -> dict:
        """The next log line whose msg is `message` (the lines before it kept in `logs`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited with {self.proc.wait()} before logging {message!r}: {self.logs}")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.logs.append(entry)
            if entry.get("msg") == message:
                return entry
        raise TimeoutError(f"server did not log {message!r} in {timeout}s")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit, collecting the rest of its logs; returns its exit status."""
        out, _ = self.proc.communicate(timeout=timeout)
        for line in out.splitlines():
            try:
                self.logs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
