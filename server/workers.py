"""`--workers N`: N server processes sharing one port, so the Python work of gRPC, validation and
encoding spreads over cores instead of queueing on one process's GIL.

The parent reserves the port (SO_REUSEPORT, never listening itself), starts N children — each a whole
server with its own event loop, onnxruntime sessions and `threads // N` intra-op threads — and the
kernel spreads connections over them. Metrics from all of them are summed by prometheus_client's
multiprocess mode and served by the parent; each child answers health for itself (a health check
reaches one of them, as a call does). SIGTERM/SIGINT are passed on, and the parent exits when they
have drained. A child that dies on its own takes the others down (exit 1), so the orchestrator
restarts a whole, known-good server rather than a silently smaller one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .config import ServerConfig
from .errors import StartupError

log = logging.getLogger(__name__)
CHILD_POLL_S = 0.2
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode reads this


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT (port 0: a free one), so every worker can bind it too."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((bare, port))
    except OSError as exc:
        sock.close()
        raise StartupError("port", port, f"cannot reserve it for the workers: {exc.strerror or exc}") from None
    return sock


def worker_command(argv: list[str], config: ServerConfig, port: int, index: int) -> list[str]:
    """The command line of worker `index`: the parent's own flags, then what makes it one of N."""
    threads = max(1, config.threads // config.workers)
    return [sys.executable, "-m", __package__ or "server", *argv, "--workers", "1", "--reuse-port", "--port", str(port),
            "--metrics-port", "0", "--intra-op-threads", str(threads),
            "--replica", f"{config.replica or socket.gethostname()}/{index}"]


def serve_metrics(config: ServerConfig, directory: str) -> None:
    """The parent's /metrics: every worker's series, summed (gauges of live processes only)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    try:
        start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    except OSError as exc:
        raise StartupError("metrics_port", config.metrics_port,
                           f"cannot serve metrics: {exc.strerror or exc}; 0 turns metrics off") from None


def run_workers(config: ServerConfig, argv: list[str]) -> int:
    """Start config.workers servers on one port and wait for them; returns the exit status."""
    reserved = reserve_port(config.host, config.port)
    port = reserved.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="seqserve-metrics-") as directory:
        env = {**os.environ, MULTIPROC_DIR: directory}
        children = [subprocess.Popen(worker_command(argv, config, port, i), env=env) for i in range(config.workers)]
        if config.metrics_port:
            serve_metrics(config, directory)
        log.info("workers started", extra={"port": port, "workers": [c.pid for c in children]})
        status = supervise(children, directory)
    reserved.close()
    return status


def supervise(children: list[subprocess.Popen], metrics_dir: str) -> int:
    """Pass SIGTERM/SIGINT on; if a worker exits unasked, stop the rest. The workers' worst exit status."""
    from prometheus_client.multiprocess import mark_process_dead

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    while any(child.poll() is None for child in children):
        for child in children:
            if child.poll() is not None:
                mark_process_dead(child.pid, metrics_dir)  # its live gauges leave the sums
        died = [c for c in children if c.poll() is not None and c.returncode != 0]
        if died and not stopping:
            log.error("a worker exited; stopping the others", extra={"pid": died[0].pid, "code": died[0].returncode})
            stop(signal.SIGTERM, None)
        time.sleep(CHILD_POLL_S)
    codes = [child.returncode for child in children]
    return max(codes, key=abs) if any(codes) else 0

