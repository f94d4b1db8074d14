"""`python -m server`: serve a model repository until SIGTERM/SIGINT, then shut down gracefully.

Exit status: 0 after a graceful shutdown, 2 when the server cannot start as configured (one
log line names the setting), 1 on anything else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

# gRPC core writes its own plain-text lines to stderr (a failed bind: three of them); the server
# logs what matters as JSON, so core stays quiet unless GRPC_VERBOSITY asks for it. Set before
# grpc is first imported, which reads it once.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
# onnxruntime's telemetry is off: a server sends nothing anywhere unasked, and without a writable home
# (a container's service user) onnxruntime prints a plain-text warning on every start.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .app import SeqserveServer
from .config import ServerConfig, parse_config
from .errors import StartupError
from .logs import configure
from .workers import run_workers

log = logging.getLogger("server")
EXIT_STARTUP = 2


async def serve(config: ServerConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = SeqserveServer(config)
        await server.start()
    except StartupError as exc:
        log.error(f"cannot start: {exc}")
        return EXIT_STARTUP
    await stop.wait()
    await server.stop()
    return 0


def main() -> int:
    config = parse_config(sys.argv[1:])
    configure(os.environ.get("SEQSERVE_LOG_LEVEL", "INFO"))
    if config.workers > 1:
        try:
            return run_workers(config, sys.argv[1:])
        except StartupError as exc:
            log.error(f"cannot start: {exc}")
            return EXIT_STARTUP
    sys.setswitchinterval(config.switch_interval_ms / 1000.0)
    with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
        return runner.run(serve(config))


def loop_factory(config: ServerConfig) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when configured and installed (the `serve` extra has it); else asyncio's own."""
    if not config.uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: serving on asyncio's own event loop (pip install 'seqserve[serve]')")
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
