"""--workers N: N server processes on one port, metrics summed by the parent, SIGTERM passed on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request

import numpy as np
import pytest
from servers import REPOSITORY, ServerProcess, free_port

from bench.loadgen import open_channels
from seqserve.client import SeqserveClient, encode_request
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


@pytest.fixture
def workers():
    metrics_port = free_port()
    proc = ServerProcess(REPOSITORY, "--workers", "2", "--metrics-port", str(metrics_port),
                         "--metrics-host", "127.0.0.1", "--grace-seconds", "5", "--drain-seconds", "0.2")
    proc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        yield proc
    finally:
        for child in children_of(proc.proc.pid):
            os.kill(child, signal.SIGKILL)
        proc.kill()


def test_workers_share_the_port_and_their_metrics_add_up(workers):
    deadline = time.monotonic() + 60
    while len(children_of(workers.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(children_of(workers.proc.pid)) == 2
    calls = 40
    for _ in range(calls):
        with SeqserveClient(workers.target, timeout=30) as client:  # a new connection each time
            client.wait_ready(30)
            assert client.encode("jv_bigru_attn", [np.zeros((5, 12), np.float32)])[0].label
    text = urllib.request.urlopen(workers.metrics_url, timeout=10).read().decode()
    assert f'seqserve_requests_total{{code="OK",method="Encode"}} {float(calls)}' in text
    assert "seqserve_models_loaded 3.0" in text
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.wait(60) == 0
    assert [e["msg"] for e in workers.logs].count("stopped") == 2


def test_a_worker_that_dies_takes_the_server_down(workers):
    deadline = time.monotonic() + 60
    while len(children_of(workers.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(children_of(workers.proc.pid)[0], signal.SIGKILL)
    assert workers.wait(60) != 0
    assert any(e.get("msg") == "a worker exited; stopping the others" for e in workers.logs)


def test_the_load_generators_connections_reach_every_worker(workers):
    """bench's --workers figure drives the server over several connections (one connection reaches one
    worker): calls over 16 of bench.loadgen's channels are answered by both workers (`seqserve-replica`;
    the kernel spreads connections by their addresses, so all 16 on one worker has odds of 2 in 2**16)."""

    async def replicas() -> set[str]:
        channels = open_channels(workers.target, 16)
        try:
            await asyncio.wait_for(asyncio.gather(*(channel.channel_ready() for channel in channels)), 60)
            request = encode_request("jv_bigru_attn", [np.zeros((5, 12), np.float32)])
            calls = [pb_grpc.SeqserveServiceStub(channel).Encode(request, timeout=30) for channel in channels]
            for call in calls:
                await call
            return {value for call in calls for key, value in await call.trailing_metadata()
                    if key == "seqserve-replica"}
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))

    workers.wait_for_log("serving")  # the second worker (the first one's line started the fixture)
    assert len(asyncio.run(replicas())) == 2
