"""`python -m server`: serve a model repository until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from server.app import SeqserveServer
from server.config import parse_config
from server.logs import configure


async def serve(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    server = SeqserveServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()
    return 0


# The inference thread needs the GIL back after every onnxruntime run; with the default 5 ms switch
# interval a busy event loop makes it wait that long each time (bench/PROFILE.md).
GIL_SWITCH_INTERVAL_S = 0.0002


def main() -> int:
    configure(os.environ.get("SEQSERVE_LOG_LEVEL", "INFO"))
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return asyncio.run(serve(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
