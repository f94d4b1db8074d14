"""Encode calls from several threads, counted by the replica that answered (`seqserve-replica`).

The scale-out tests use it in their own process, or as a script on this host or inside a container
on the Compose network (it needs only the seqserve client, which the serving image holds):

    python scale_load.py TARGET --seconds 8 --threads 8    # prints "ready", then one JSON line
    python scale_load.py TARGET --calls 30                  # 30 calls, one after the other
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from seqserve.client import SeqserveClient, encode_request
from seqserve.v1 import seqserve_pb2 as pb

REPLICA_KEY = "seqserve-replica"  # server/admission.py (the serving image has no tests, and a client no server)
MODEL = "jv_bilstm_attn"
FEATURES = 12
CALL_TIMEOUT_S = 30.0


@dataclass
class Tally:
    answered: collections.Counter = field(default_factory=collections.Counter)  # replica -> calls
    failed: list[str] = field(default_factory=list)  # "CODE: details" of each call that failed
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, replica: str | None = None, failure: str | None = None) -> None:
        with self._lock:
            if failure is None:
                self.answered[replica or "?"] += 1
            else:
                self.failed.append(failure)

    def to_dict(self) -> dict:
        return {"answered": dict(self.answered), "failed": self.failed}


def sample_request() -> pb.EncodeRequest:
    rng = np.random.default_rng(0)
    return encode_request(MODEL, [rng.normal(size=(20, FEATURES)).astype(np.float32) for _ in range(4)])


def call_until(client: SeqserveClient, request: pb.EncodeRequest, tally: Tally, more: Callable[[], bool]) -> None:
    while more():
        try:
            _, call = client.stub.Encode.with_call(request, timeout=CALL_TIMEOUT_S)
            tally.add(replica=dict(call.initial_metadata()).get(REPLICA_KEY))
        except grpc.RpcError as exc:
            tally.add(failure=f"{exc.code().name}: {exc.details()}")


def count_calls(client: SeqserveClient, calls: int) -> Tally:
    """`calls` Encode calls, one after the other."""
    tally, left = Tally(), iter(range(calls))
    call_until(client, sample_request(), tally, lambda: next(left, None) is not None)
    return tally


def load(client: SeqserveClient, seconds: float, threads: int) -> Tally:
    """Encode calls from `threads` threads for `seconds`."""
    tally, request, until = Tally(), sample_request(), time.monotonic() + seconds
    workers = [threading.Thread(target=call_until, args=(client, request, tally, lambda: time.monotonic() < until))
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="gRPC target, e.g. dns:///server:50051")
    parser.add_argument("--calls", type=int, help="this many calls, one after the other")
    parser.add_argument("--seconds", type=float, default=5.0, help="otherwise: calls for this long")
    parser.add_argument("--threads", type=int, default=8, help="... from this many threads")
    args = parser.parse_args(argv)
    with SeqserveClient(args.target) as client:
        client.wait_ready(timeout=CALL_TIMEOUT_S)
        client.list_models()  # connected, and answered
        print("ready", flush=True)
        tally = count_calls(client, args.calls) if args.calls else load(client, args.seconds, args.threads)
    print(json.dumps(tally.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
