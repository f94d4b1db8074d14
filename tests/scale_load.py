"""Encode calls from several threads, counted by the replica that answered (`seqserve-replica` trailer).

The scale-out tests use it in their own process, or as a script on this host or inside a container
on the Compose network (it needs only the seqserve client, which the serving image holds):

    python scale_load.py TARGET --seconds 8 --threads 8    # prints "ready", then one JSON line
    python scale_load.py TARGET --calls 30                  # 30 calls, one after the other

The capacity figures in docs/scaling.md are its `sequences_per_s` (calls answered x --sequences / seconds).
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
    seconds: float = 0.0  # how long the calls took, all of them
    slowest_s: float = 0.0  # the longest single call (a stall while a replica dies shows here)
    over_1s: int = 0  # calls that took longer than a second
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, took_s: float, replica: str | None = None, failure: str | None = None) -> None:
        with self._lock:
            self.slowest_s = max(self.slowest_s, took_s)
            self.over_1s += took_s > 1.0
            if failure is None:
                self.answered[replica or "?"] += 1
            else:
                self.failed.append(failure)

    def to_dict(self, sequences_per_call: int) -> dict:
        calls = sum(self.answered.values())
        return {"answered": dict(self.answered), "failed": self.failed, "seconds": round(self.seconds, 3),
                "slowest_s": round(self.slowest_s, 3), "over_1s": self.over_1s,
                "sequences_per_s": round(calls * sequences_per_call / self.seconds, 1) if self.seconds else 0.0}


def sample_request(sequences: int = 4) -> pb.EncodeRequest:
    """`sequences` random sequences of 20 steps (JapaneseVowels utterances have 7-29)."""
    rng = np.random.default_rng(0)
    return encode_request(MODEL, [rng.normal(size=(20, FEATURES)).astype(np.float32) for _ in range(sequences)])


def call_until(client: SeqserveClient, request: pb.EncodeRequest, tally: Tally, more: Callable[[], bool]) -> None:
    while more():
        started = time.monotonic()
        try:
            _, call = client.stub.Encode.with_call(request, timeout=CALL_TIMEOUT_S)
            tally.add(time.monotonic() - started, replica=dict(call.trailing_metadata()).get(REPLICA_KEY))
        except grpc.RpcError as exc:
            tally.add(time.monotonic() - started, failure=f"{exc.code().name}: {exc.details()}")


def count_calls(client: SeqserveClient, calls: int, sequences: int = 4) -> Tally:
    """`calls` Encode calls, one after the other."""
    tally, left, started = Tally(), iter(range(calls)), time.monotonic()
    call_until(client, sample_request(sequences), tally, lambda: next(left, None) is not None)
    tally.seconds = time.monotonic() - started
    return tally


def load(client: SeqserveClient, seconds: float, threads: int, sequences: int = 4) -> Tally:
    """Encode calls from `threads` threads for `seconds`."""
    tally, request, started = Tally(), sample_request(sequences), time.monotonic()
    until = started + seconds
    workers = [threading.Thread(target=call_until, args=(client, request, tally, lambda: time.monotonic() < until))
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    tally.seconds = time.monotonic() - started
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="gRPC target, e.g. dns:///server:50051")
    parser.add_argument("--calls", type=int, help="this many calls, one after the other")
    parser.add_argument("--seconds", type=float, default=5.0, help="otherwise: calls for this long")
    parser.add_argument("--threads", type=int, default=8, help="... from this many threads")
    parser.add_argument("--sequences", type=int, default=4, help="sequences per call")
    args = parser.parse_args(argv)
    with SeqserveClient(args.target) as client:
        client.wait_ready(timeout=CALL_TIMEOUT_S)
        client.list_models()  # connected, and answered
        print("ready", flush=True)
        if args.calls:
            tally = count_calls(client, args.calls, args.sequences)
        else:
            tally = load(client, args.seconds, args.threads, args.sequences)
    print(json.dumps(tally.to_dict(args.sequences)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
